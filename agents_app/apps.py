from django.apps import AppConfig


class AgentsAppConfig(AppConfig):
    """Compute: KVM hosts and their agents, primary pools and pool copies, VMs, VM pools,
    snapshots and direct-download certificates. It plugs into the layers below through what
    they own: the catalogue's reference registry and URL-check hook, and the versions' signals
    and registry of channel followers."""

    name = "agents_app"
    verbose_name = "Agents and VMs"

    def ready(self) -> None:
        from templates_app.impacts import register_copy_bytes
        from templates_app.signals import template_removed, templates_deactivated
        from templates_app.url_checks import register_direct_download_checker
        from versions_app.channel_followers import register_follower_source
        from versions_app.signals import channel_moved, version_usable

        from .cloudstack.infrastructure import register_infrastructure_commands
        from .cloudstack.storage import register_storage_commands
        from .cloudstack.vms import register_vm_commands
        from .followers import channel_followers
        from .handlers import (
            on_channel_moved,
            on_template_removed,
            on_templates_deactivated,
            on_version_usable,
        )
        from .impacts import pool_copy_rows
        from .progress import register_progress_sources
        from .references import register_compute_references
        from .services import direct_download_check

        register_compute_references()
        register_copy_bytes("pool_copy", pool_copy_rows)
        register_progress_sources()
        register_vm_commands()
        register_storage_commands()
        register_infrastructure_commands()
        register_direct_download_checker(direct_download_check)
        version_usable.connect(on_version_usable, dispatch_uid="agents.version_usable")
        channel_moved.connect(on_channel_moved, dispatch_uid="agents.channel_moved")
        register_follower_source("compute", channel_followers)
        templates_deactivated.connect(
            on_templates_deactivated, dispatch_uid="agents.templates_deactivated"
        )
        template_removed.connect(on_template_removed, dispatch_uid="agents.template_removed")
