"""What the catalogue tells the layers above it, sent after the change has committed.

- `store_copy_ready(sender="store_copy", template_id, ref_id)`: a copy's bytes are READY on
  an image store (download, upload or a VM's disk); versions may become usable.
- `template_removed(sender=Template, template_ids)`: the GC sweep removed these templates.
- `templates_deactivated(sender="template", template_ids)`: deleted (INACTIVE) just now; the
  layers above stop what they were fetching for them.
"""

from django.db import transaction
from django.dispatch import Signal

store_copy_ready = Signal()
template_removed = Signal()
templates_deactivated = Signal()


def send_store_copy_ready_on_commit(*, template_id: int, ref_id: int) -> None:
    """Call inside the transaction that made the copy READY."""
    transaction.on_commit(
        lambda: store_copy_ready.send(sender="store_copy", template_id=template_id, ref_id=ref_id)
    )
