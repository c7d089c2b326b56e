"""What compute does when a lower layer says something happened (connected in apps.ready)."""

from .tasks import rebuild_latest_followers_task


def on_version_usable(*, lineage_id: int, **_ignored) -> None:
    """versions_app says a version is usable: rebuild the lineage's followers in a worker."""
    rebuild_latest_followers_task.delay(base_template_id=lineage_id)
