"""Re-inspection of stored images (`manage.py rescan_images`, the admin's "Rescan images").

Every READY store copy is inspected again with today's inspector (templates_app.images:
header checks, qemu-img info/check/measure). A copy that fails is QUARANTINED through its
transition, with the reason in `error_text` and an event: its bytes stay where they are (an
operator may want them, and a false positive must cost nothing), and nothing deploys from it
(`ensure_not_quarantined`, asked by deploys and prepare). Copies are read in batches by id, the
inspection runs outside any transaction, and the move re-checks the copy under its row lock, so
a rescan can run at any time, twice, or alongside downloads and sweeps.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction
from django.db.models import QuerySet

from . import storepaths
from .choices import StoreRefState
from .errors import TransitionConflict
from .events import record_event
from .images.inspection import ImageRejected, inspect_image
from .locks import lock_copy
from .models import Template, TemplateStoreRef

logger = logging.getLogger(__name__)

QUARANTINE_PREFIX = "quarantined: "


@dataclass
class RescanResult:
    checked: int = 0
    passed: int = 0
    quarantined: int = 0
    missing: int = 0  # no file: template sync's business (sync_templates), left alone here
    quarantined_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "checked": self.checked,
            "passed": self.passed,
            "quarantined": self.quarantined,
            "missing": self.missing,
        }

    def __str__(self) -> str:
        return (
            f"checked {self.checked}, passed {self.passed}, quarantined {self.quarantined}, "
            f"missing {self.missing}"
        )


def _ready_copies() -> QuerySet[TemplateStoreRef]:
    return TemplateStoreRef.objects.filter(state=StoreRefState.READY, store__isnull=False)


def rescan_images(
    *,
    copies: QuerySet[TemplateStoreRef] | None = None,
    actor=None,
    actor_label: str = "rescan_images",
    batch_size: int = 200,
) -> RescanResult:
    """Re-inspect the READY store copies among `copies` (default: all of them), quarantining
    the ones that fail. Idempotent: a quarantined copy is no longer READY, so a second run
    checks only what still passes."""
    wanted = (copies if copies is not None else _ready_copies()).filter(
        state=StoreRefState.READY, store__isnull=False
    )
    result = RescanResult()
    last_id = 0
    while True:
        batch = list(
            wanted.filter(pk__gt=last_id)
            .select_related("store", "template")
            .order_by("pk")[:batch_size]
        )
        if not batch:
            return result
        for ref in batch:
            _rescan_one(ref, result, actor=actor, actor_label=actor_label)
        last_id = batch[-1].pk


def _rescan_one(ref: TemplateStoreRef, result: RescanResult, *, actor, actor_label: str) -> None:
    path = storepaths.absolute(ref.store, ref.install_path)
    if not Path(path).is_file():
        result.missing += 1
        return
    result.checked += 1
    try:
        inspect_image(path, ref.template.format)
    except ImageRejected as exc:
        if _quarantine(ref.pk, ref.install_path, exc.reason, actor=actor, actor_label=actor_label):
            result.quarantined += 1
            result.quarantined_ids.append(ref.pk)
            logger.warning("store copy %s quarantined: %s", ref.pk, exc.reason)
        return
    result.passed += 1


@transaction.atomic
def _quarantine(ref_id: int, install_path: str, reason: str, *, actor, actor_label: str) -> bool:
    """READY -> QUARANTINED under the copy's lock, if it is still the copy that was inspected
    (a sweep or a new download may have moved it meanwhile). The bytes are not touched."""
    ref = lock_copy(ref_id)
    if ref.state != StoreRefState.READY or ref.install_path != install_path:
        return False
    ref.quarantine()
    ref.error_text = f"{QUARANTINE_PREFIX}{reason}"[:4000]
    ref.save(update_fields=["state", "error_text", "updated_at"])
    record_event(
        ref,
        from_state=StoreRefState.READY,
        to_state=ref.state,
        actor=actor,
        actor_label=actor_label,
        reason=f"re-inspection refused the image (bytes kept): {reason}"[:1024],
    )
    return True


class ImageQuarantined(TransitionConflict):
    """A template whose stored image is quarantined cannot be deployed or prepared (409)."""

    def __init__(self, template: Template, ref: TemplateStoreRef, action: str):
        super().__init__(
            template,
            action,
            reason=f"its image on '{ref.store}' is quarantined ({ref.error_text})",
        )


def has_quarantined_copy(template_id: int) -> bool:
    return TemplateStoreRef.objects.filter(
        template_id=template_id, state=StoreRefState.QUARANTINED
    ).exists()


def ensure_not_quarantined(template: Template, *, action: str = "deploy a VM from") -> None:
    """Refuse a template any of whose store copies is QUARANTINED: the copies hold the same
    bytes, so one failing the inspector condemns the image until an operator decides."""
    ref = (
        TemplateStoreRef.objects.filter(template=template, state=StoreRefState.QUARANTINED)
        .select_related("store")
        .order_by("pk")
        .first()
    )
    if ref is not None:
        raise ImageQuarantined(template, ref, action)
