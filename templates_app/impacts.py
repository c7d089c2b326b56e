"""What a destructive action will affect, for its confirmation page: selectors, one place.

Each `*_impact` function reads, never writes. An `Impact` lists the objects the action changes,
the live references that keep bytes alive, the bytes the GC sweep will free, and when. Upper
layers add their own copies of a template (pool copies) through `register_copy_bytes`, and
their own impacts (VM destroy, pool-copy eviction) in their impacts modules.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from .choices import StoreRefState, TemplateState
from .models import Template, TemplateStoreRef
from .references import reference_rows


@dataclass
class Impact:
    """The confirmation page's content."""

    summary: str
    affected: list[dict] = field(default_factory=list)  # kind, name, state, detail
    references: list[dict] = field(default_factory=list)  # as references.reference_rows
    bytes_freed: int = 0
    when: str = ""
    notes: list[str] = field(default_factory=list)


# kind -> (template ids) -> rows {"kind", "name", "bytes"} of copies the sweep would delete.
_copy_bytes: dict[str, Callable[[list[int]], list[dict]]] = {}


def register_copy_bytes(kind: str, rows: Callable[[list[int]], list[dict]]) -> None:
    """An upper layer's copies of templates (e.g. compute's pool copies), counted in the bytes
    a removal frees."""
    _copy_bytes[kind] = rows


def store_copy_rows(template_ids: list[int]) -> list[dict]:
    refs = (
        TemplateStoreRef.objects.filter(template_id__in=template_ids)
        .exclude(state__in=[StoreRefState.DESTROYED, StoreRefState.DESTROYING])
        .select_related("store", "template")
        .order_by("pk")
    )
    return [
        {
            "kind": "store copy",
            "name": f"{ref.template} on {ref.store.name if ref.store else 'direct download'}",
            "bytes": ref.physical_size or 0,
        }
        for ref in refs
    ]


def copies_of(template_ids: list[int]) -> list[dict]:
    rows = store_copy_rows(template_ids)
    for provider in _copy_bytes.values():
        rows.extend(provider(template_ids))
    return rows


def _deactivated_with(template: Template) -> list[Template]:
    """The template and, for a base, its ACTIVE versions (template_deactivate's rule)."""
    targets = [template] if template.state == TemplateState.ACTIVE else []
    if template.base_id is None:
        targets += list(template.versions.filter(state=TemplateState.ACTIVE).order_by("pk"))
    return targets


def removal_time(references: int) -> str:
    """When the GC sweep removes a template deactivated now."""
    grace = timedelta(seconds=max(settings.STENCIL_GC_GRACE_SECONDS, 0))
    if references:
        return (
            "The GC sweep removes the bytes once nothing references them "
            f"(no sooner than {timezone.localtime(timezone.now() + grace):%Y-%m-%d %H:%M:%S})."
        )
    if grace:
        return (
            "Nothing references it: the GC sweep removes the bytes after "
            f"{timezone.localtime(timezone.now() + grace):%Y-%m-%d %H:%M:%S} "
            "(reactivate before then to undo)."
        )
    return "Nothing references it: the GC sweep removes the bytes right away."


def template_deactivate_impact(template: Template, data: dict | None = None) -> Impact:
    """Deactivating (deleting) a template: it and its ACTIVE versions become INACTIVE; their
    references keep them; the sweep then frees their copies."""
    targets = _deactivated_with(template)
    ids = [target.pk for target in targets]
    references = [row for target in targets for row in reference_rows(target)]
    copies = copies_of(ids)
    affected = [
        {
            "kind": "template" if target.pk == template.pk else "version",
            "name": f"{target} (version {target.version_number})",
            "state": f"{target.state} → INACTIVE",
            "detail": "hidden from listings and new deployments",
        }
        for target in targets
    ]
    affected += [
        {"kind": row["kind"], "name": row["name"], "state": "", "detail": _bytes(row["bytes"])}
        for row in copies
    ]
    return Impact(
        summary=(
            f"Deactivate “{template}”: {len(targets)} template(s) become INACTIVE; "
            "existing VMs keep running."
        ),
        affected=affected,
        references=references,
        bytes_freed=sum(row["bytes"] for row in copies),
        when=removal_time(len(references)),
    )


def gc_sweep_impact(template_ids: list[int] | None = None) -> Impact:
    """A sweep now: the INACTIVE templates past the grace with no live reference go, with their
    copies; the held ones are listed with what holds them."""
    from .references import has_live_reference
    from .services import past_grace

    inactive = Template.objects.filter(state=TemplateState.INACTIVE)
    if template_ids is not None:
        inactive = inactive.filter(pk__in=template_ids)
    removable = list(past_grace(inactive).exclude(has_live_reference()).order_by("pk"))
    held = list(inactive.filter(has_live_reference()).order_by("pk"))
    copies = copies_of([t.pk for t in removable])
    affected = [
        {"kind": "template", "name": str(t), "state": "INACTIVE → REMOVED", "detail": ""}
        for t in removable
    ]
    affected += [
        {"kind": row["kind"], "name": row["name"], "state": "", "detail": _bytes(row["bytes"])}
        for row in copies
    ]
    references = [row for t in held for row in reference_rows(t)]
    return Impact(
        summary=f"GC sweep now: {len(removable)} template(s) removed, {len(held)} held.",
        affected=affected,
        references=references,
        bytes_freed=sum(row["bytes"] for row in copies),
        when="At once, in the background (the sweep's run page tells what it removed).",
    )


def _bytes(value: int) -> str:
    from django.template.defaultfilters import filesizeformat

    return filesizeformat(value)
