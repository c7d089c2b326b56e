"""Compute's sources of live progress (templates_app.progress registry): pool copies, and VMs
being deployed (their template's copy onto their pool is the slow part). One query per kind."""

from typing import Any

from django.db.models import OuterRef, Subquery

from templates_app.choices import StoreRefState
from templates_app.models import TemplateStoreRef
from templates_app.progress import estimated_total, register_progress_source

from .choices import PoolCopyState, VmState
from .models import TemplatePoolRef, VirtualMachine

POOL_IN_FLIGHT = (
    PoolCopyState.NOT_DOWNLOADED,
    PoolCopyState.DOWNLOAD_IN_PROGRESS,
    PoolCopyState.EVICTING,
)


def _source_size(template_ref: str) -> Subquery:
    """The physical size of a READY store copy of the template: what a pool copy will weigh."""
    return Subquery(
        TemplateStoreRef.objects.filter(
            template_id=OuterRef(template_ref), state=StoreRefState.READY
        )
        .exclude(physical_size=None)
        .values("physical_size")[:1]
    )


def pool_copies_progress(ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = (
        TemplatePoolRef.objects.filter(pk__in=ids)
        .annotate(source_size=_source_size("template_id"))
        .values("pk", "state", "download_percent", "physical_size", "source_size", "error_text")
    )
    answer = {}
    for row in rows:
        total = row["physical_size"] or row["source_size"]
        answer[row["pk"]] = {
            "percent": row["download_percent"],
            "done_bytes": total * row["download_percent"] // 100 if total else None,
            "total_bytes": estimated_total(0, row["download_percent"], total),
            "active": row["state"] in POOL_IN_FLIGHT,
            "state": row["state"],
            "error": row["error_text"],
        }
    return answer


def vms_progress(ids: list[int]) -> dict[int, dict[str, Any]]:
    """A deploying VM's progress is its template's copy onto its pool (100 once it is there)."""
    copy = TemplatePoolRef.objects.filter(
        template_id=OuterRef("template_id"), pool_id=OuterRef("pool_id")
    )
    rows = (
        VirtualMachine.objects.filter(pk__in=ids)
        .annotate(
            copy_percent=Subquery(copy.values("download_percent")[:1]),
            copy_state=Subquery(copy.values("state")[:1]),
            source_size=_source_size("template_id"),
        )
        .values("pk", "state", "error_text", "copy_percent", "copy_state", "source_size")
    )
    answer = {}
    for row in rows:
        copied = row["copy_state"] == PoolCopyState.DOWNLOADED
        percent = 100 if copied else (row["copy_percent"] or 0)
        total = row["source_size"]
        answer[row["pk"]] = {
            "percent": percent if row["state"] == VmState.STARTING else 100,
            "done_bytes": total * percent // 100 if total else None,
            "total_bytes": total,
            "active": row["state"] == VmState.STARTING,
            "state": row["state"],
            "error": row["error_text"],
        }
    return answer


def register_progress_sources() -> None:
    register_progress_source("pool", pool_copies_progress)
    register_progress_source("vm", vms_progress)
