from django.apps import AppConfig


class VersionsAppConfig(AppConfig):
    """Template lineages: version numbering, 'latest', the newest-per-lineage listing rule, and
    the lineage's release channels."""

    name = "versions_app"
    verbose_name = "Versions"

    def ready(self) -> None:
        from templates_app.signals import store_copy_ready

        from .cloudstack.commands import register_template_commands
        from .handlers import on_store_copy_ready
        from .references import register_channel_references

        store_copy_ready.connect(on_store_copy_ready, dispatch_uid="versions.copy_ready")
        register_template_commands()
        register_channel_references()
