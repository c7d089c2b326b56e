"""What compute does when a lower layer says something happened (connected in apps.ready)."""

from .agent.pool_copies import pool_copies_cancel
from .pool_copies import pool_copies_evict_removed
from .tasks import rebuild_channel_followers_task, rebuild_latest_followers_task


def on_templates_deactivated(*, template_ids: list[int], **_ignored) -> None:
    """Deleted templates: their direct downloads into pools that no deploy needs stop."""
    pool_copies_cancel(template_ids=template_ids)


def on_template_removed(*, template_ids: list[int], **_ignored) -> None:
    """The sweep removed templates: their unused pool copies go now, not at LRU eviction."""
    pool_copies_evict_removed(template_ids=template_ids)


def on_version_usable(*, lineage_id: int, **_ignored) -> None:
    """versions_app says a version is usable: rebuild the lineage's followers in a worker."""
    rebuild_latest_followers_task.delay(base_template_id=lineage_id)


def on_channel_moved(*, lineage_id: int, channel: str, **_ignored) -> None:
    """versions_app says a channel moved (promote, rollback): rebuild its followers in a worker."""
    rebuild_channel_followers_task.delay(base_template_id=lineage_id, channel=channel)
