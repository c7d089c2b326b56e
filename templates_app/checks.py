"""System checks: settings that would otherwise fail on the first request that reads them."""

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
