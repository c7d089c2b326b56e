"""Stencil's system checks: settings that would otherwise fail on the first request that reads
them, and its own `check --deploy` checks (docs/deployment.md)."""

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


@checks.register(checks.Tags.security)
def outbound_url_settings(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """STENCIL_URL_DENIED_NETWORKS, _ALLOWED_NETWORKS and _ALLOWED_PORTS parse, or startup
    (`manage.py check`, runserver, the workers) says which one is wrong."""
    from .images import urlsafety

    errors = []
    for read in (
        urlsafety._denied_networks,
        urlsafety._allowed_networks,
        urlsafety._allowed_ports,
    ):
        try:
            read()
        except ImproperlyConfigured as exc:
            errors.append(checks.Error(str(exc), id="stencil.E001"))
    return errors


@checks.register(checks.Tags.security, deploy=True)
def public_url_is_https(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """Upload URLs carry their signature: over plain HTTP anyone on the way can replay them."""
    if settings.STENCIL_PUBLIC_URL.lower().startswith("https://"):
        return []
    return [
        checks.Warning(
            f"STENCIL_PUBLIC_URL is {settings.STENCIL_PUBLIC_URL!r}: upload URLs would be plain "
            "HTTP (and SECURE_SSL_REDIRECT refuses their POST)",
            hint="set STENCIL_PUBLIC_URL to the https:// address clients reach Stencil at",
            id="stencil.W001",
        )
    ]
