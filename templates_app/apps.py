from django.apps import AppConfig


class TemplatesAppConfig(AppConfig):
    """The catalogue: zones, image stores, accounts, templates and their store copies."""

    name = "templates_app"
    verbose_name = "Templates"

    def ready(self) -> None:
        from . import checks  # noqa: F401 (registers the deploy checks)
        from .cloudstack.commands import register_transport_commands
        from .images.redaction import install_log_redaction

        register_transport_commands()
        # Every process that sets Django up (web, workers, beat, agents, commands) redacts its
        # log records when they are made, whoever logs them (docs/security.md).
        install_log_redaction()
