from django.apps import AppConfig


class TemplatesAppConfig(AppConfig):
    """The catalogue: zones, image stores, accounts, templates and their store copies."""

    name = "templates_app"
    verbose_name = "Templates"

    def ready(self) -> None:
        from . import checks  # noqa: F401 (registers the deploy checks)
        from .cloudstack.commands import register_transport_commands

        register_transport_commands()
