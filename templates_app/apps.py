from django.apps import AppConfig


class TemplatesAppConfig(AppConfig):
    """The catalogue: zones, image stores, accounts, templates and their store copies."""

    name = "templates_app"
    verbose_name = "Templates"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from . import checks  # noqa: F401  (registers the system checks)
        from .cloudstack.commands import register_transport_commands
        from .images.redaction import install_log_redaction
        from .models import ImageStore
        from .store_fill import on_image_store_saved

        register_transport_commands()
        # Every process that sets Django up (web, workers, beat, agents, commands) redacts its
        # log records when they are made, whoever logs them (docs/security.md).
        install_log_redaction()
        post_save.connect(
            on_image_store_saved, sender=ImageStore, dispatch_uid="templates.image_store_fill"
        )
