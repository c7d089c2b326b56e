from django.apps import AppConfig


class VersionsAppConfig(AppConfig):
    """Template versions and 'latest' resolution (issue: template versions)."""

    name = "versions_app"
    verbose_name = "Versions"
