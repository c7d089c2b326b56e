"""Domain events of lineages, for the layers above (compute rebuilds followers on them).

- `version_usable(sender="lineage", template_id, lineage_id)`: a template of a lineage has
  READY bytes (or needs none: direct download), so 'latest' may now resolve to it. Sent after
  commit.
"""

from django.dispatch import Signal

version_usable = Signal()


def send_version_usable(*, template_id: int, lineage_id: int) -> None:
    version_usable.send(sender="lineage", template_id=template_id, lineage_id=lineage_id)
