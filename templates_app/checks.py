"""Stencil's own `check --deploy` checks (docs/deployment.md)."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def public_url_is_https(app_configs, **kwargs) -> list[Warning]:
    """Upload URLs carry their signature: over plain HTTP anyone on the way can replay them."""
    if settings.STENCIL_PUBLIC_URL.lower().startswith("https://"):
        return []
    return [
        Warning(
            f"STENCIL_PUBLIC_URL is {settings.STENCIL_PUBLIC_URL!r}: upload URLs would be plain "
            "HTTP (and SECURE_SSL_REDIRECT refuses their POST)",
            hint="set STENCIL_PUBLIC_URL to the https:// address clients reach Stencil at",
            id="stencil.W001",
        )
    ]
