"""Domain events of lineages, for the layers above (compute rebuilds followers on them).

- `version_usable(sender="lineage", template_id, lineage_id)`: a template of a lineage has
  READY bytes (or needs none: direct download), so 'latest' may now resolve to it. Sent after
  commit.
- `channel_moved(sender="channel", lineage_id, channel, from_version_id, to_version_id)`: a
  channel was promoted or rolled back; its followers move. Sent after commit.
"""

from django.db import transaction
from django.dispatch import Signal

version_usable = Signal()
channel_moved = Signal()


def send_version_usable(*, template_id: int, lineage_id: int) -> None:
    version_usable.send(sender="lineage", template_id=template_id, lineage_id=lineage_id)


def send_channel_moved_on_commit(
    *, lineage_id: int, channel: str, from_version_id: int | None, to_version_id: int
) -> None:
    """Call inside the transaction that moved the channel."""
    transaction.on_commit(
        lambda: channel_moved.send(
            sender="channel",
            lineage_id=lineage_id,
            channel=channel,
            from_version_id=from_version_id,
            to_version_id=to_version_id,
        )
    )
