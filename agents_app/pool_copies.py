"""Management side of template copies on primary pools (seed 001): pinning (pre-populate),
`template_prepare`, and eviction of unused cached copies (a scheduled task of compute). The
copying itself runs on hosts: agents_app.agent.pool_copies.
"""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_fsm import can_proceed

from templates_app.choices import TemplateState
from templates_app.errors import InvalidInput, StencilError
from templates_app.events import record_event
from templates_app.locks import lock_template
from templates_app.models import Template
from templates_app.rescan import ensure_not_quarantined
from templates_app.selectors import template_in_zone

from .agent.pool_copies import PoolCopyFailed, pool_copy_row
from .choices import PoolCopyState
from .models import PrimaryPool, TemplatePoolRef


@transaction.atomic
def pool_copy_set_pinned(*, template_id: int, pool_id: int, pinned: bool, actor) -> TemplatePoolRef:
    """Pin (pre-populate) or unpin a template on a pool. A pinned copy is a live reference."""
    template = lock_template(template_id)
    if pinned and template.state != TemplateState.ACTIVE:
        raise PoolCopyFailed(
            f"template '{template}' is {template.state}; only ACTIVE can be pinned"
        )
    if not pinned:
        ref = (
            TemplatePoolRef.objects.select_for_update()
            .filter(template_id=template_id, pool_id=pool_id)
            .first()
        )
        if ref is None:
            raise InvalidInput("the template has no copy on this pool", field="pool")
    else:
        row = pool_copy_row(template_id, pool_id)
        ref = TemplatePoolRef.objects.select_for_update().get(pk=row.pk)
    if ref.pinned != pinned:
        ref.pinned = pinned
        ref.save(update_fields=["pinned", "updated_at"])
        record_event(
            ref,
            from_state=str(not pinned),
            to_state=str(pinned),
            field="pinned",
            actor=actor,
            actor_label="system",
            reason="pinned" if pinned else "unpinned",
        )
    return ref


def _host_reaching(pool: PrimaryPool):
    from .choices import HostState

    return pool.hosts.filter(state=HostState.UP).order_by("?").first()


@transaction.atomic
def template_prepare(
    *, template_id: int, pool_ids: list[int] | None = None, zone_id: int | None = None, actor
) -> list[TemplatePoolRef]:
    """CloudStack's prepareTemplate (seed 001): pin the template on chosen pools, or every pool
    of a zone, and have an Up host of each pool copy it now. Pinned copies are live references.
    """
    from .agent.tasks import pool_copy_task

    pools = PrimaryPool.objects.select_related("zone")
    if pool_ids is not None:
        pools = pools.filter(pk__in=pool_ids)
        field = "pools"
    elif zone_id is not None:
        pools = pools.filter(zone_id=zone_id)
        field = "zone"
    else:
        raise InvalidInput("give pools or a zone", field="pools")
    template = Template.objects.get(pk=template_id)
    ensure_not_quarantined(template, action="prepare")
    pools = list(pools.order_by("pk"))
    if not pools:
        raise InvalidInput("no primary pool matches", field=field)
    for pool in pools:
        if not template_in_zone(template, pool.zone):
            raise InvalidInput(
                f"template '{template}' is not available in zone '{pool.zone}' of pool '{pool}'",
                field=field,
            )
    refs = []
    for pool in pools:
        host = _host_reaching(pool)
        if host is None:
            raise PoolCopyFailed(f"no Up host reaches pool '{pool}'")
        refs.append(
            pool_copy_set_pinned(template_id=template_id, pool_id=pool.pk, pinned=True, actor=actor)
        )
        args = {
            "template_id": template_id,
            "pool_id": pool.pk,
            "libvirt_uri": host.libvirt_uri,
            "host_name": host.name,
        }
        queue = host.queue
        transaction.on_commit(lambda a=args, q=queue: pool_copy_task.apply_async(kwargs=a, queue=q))
    return refs


# Operators: retry a failed copy ------------------------------------------------------------


class PoolCopyRefused(StencilError):
    """An operator's action on one pool copy that its state or use does not allow (409)."""

    status_code = 409
    code = "conflict"

    def __init__(self, ref: TemplatePoolRef, action: str, reason: str):
        super().__init__(f"cannot {action} pool copy '{ref}' in state {ref.state}: {reason}")
        self.state = ref.state


@transaction.atomic
def pool_copy_retry(*, ref_id: int, actor) -> TemplatePoolRef:
    """'Retry download': a DOWNLOAD_ERROR copy goes back to NOT_DOWNLOADED and an Up host of its
    pool is asked (its own queue, pool_copy_task) to make it once this commits. The error moves
    to the event; the attempt count stays. Anything else is a 409 naming the state."""
    from .agent.tasks import pool_copy_task

    template_id = TemplatePoolRef.objects.values_list("template_id", flat=True).get(pk=ref_id)
    template = lock_template(template_id)  # lock order: template -> pool copy
    ref = TemplatePoolRef.objects.select_for_update().select_related("pool").get(pk=ref_id)
    if not can_proceed(ref.retry_copy):
        raise PoolCopyRefused(ref, "retry", "only DOWNLOAD_ERROR copies are retried")
    if template.state == TemplateState.REMOVED:
        raise PoolCopyRefused(ref, "retry", f"its template '{template}' is REMOVED")
    host = _host_reaching(ref.pool)
    if host is None:
        raise PoolCopyRefused(ref, "retry", f"no Up host reaches pool '{ref.pool}'")
    error = ref.error_text
    ref.retry_copy()
    ref.error_text = ""
    ref.download_percent = 0
    ref.save()
    record_event(
        ref,
        from_state=PoolCopyState.DOWNLOAD_ERROR,
        to_state=ref.state,
        actor=actor,
        actor_label="system",
        reason=f"retry requested on host {host.name}; previous error: {error or '(none)'}",
    )
    args = {
        "template_id": template_id,
        "pool_id": ref.pool_id,
        "libvirt_uri": host.libvirt_uri,
        "host_name": host.name,
    }
    queue = host.queue
    transaction.on_commit(lambda: pool_copy_task.apply_async(kwargs=args, queue=queue))
    return ref


# Operators: evict one copy now ----------------------------------------------------------


@transaction.atomic
def pool_copy_evict(*, ref_id: int, actor) -> TemplatePoolRef:
    """'Evict' from the copy's page: an unpinned copy no VM disk is on goes EVICTING now, and
    an Up host of its pool deletes the volume once this commits (the sweep asks again while
    no host is Up). The rules are the sweep's (`_unused_copies`), checked under the locks."""
    from .agent.tasks import pool_copy_evict_task

    template_id = TemplatePoolRef.objects.values_list("template_id", flat=True).get(pk=ref_id)
    lock_template(template_id)  # lock order: template -> pool copy
    ref = TemplatePoolRef.objects.select_for_update().select_related("pool").get(pk=ref_id)
    if ref.pinned:
        raise PoolCopyRefused(ref, "evict", "it is pinned; unpin it first")
    if not can_proceed(ref.start_eviction):
        raise PoolCopyRefused(ref, "evict", "only DOWNLOADED or DOWNLOAD_ERROR copies are evicted")
    if not _unused_copies().filter(pk=ref_id).exists():
        raise PoolCopyRefused(ref, "evict", "a VM's disk is on it")
    before = ref.state
    ref.start_eviction()
    ref.save()
    record_event(
        ref, from_state=before, to_state=ref.state, actor=actor, reason="evicted by an operator"
    )
    host = _host_reaching(ref.pool)
    if host is not None:
        args = {"ref_id": ref.pk, "libvirt_uri": host.libvirt_uri}
        queue = host.queue
        transaction.on_commit(lambda: pool_copy_evict_task.apply_async(kwargs=args, queue=queue))
    return ref


# Eviction (in the GC sweep) ---------------------------------------------------------------


def _unused_copies():
    """Unpinned DOWNLOADED/failed copies that no VM disk can be on: no VM of that template on
    that pool is alive (VM rows name their pool before the agent touches the copy)."""
    from django.db.models import Exists, OuterRef

    from .choices import VmState
    from .models import VirtualMachine

    vm_on_copy = VirtualMachine.objects.filter(
        template_id=OuterRef("template_id"), pool_id=OuterRef("pool_id")
    ).exclude(state=VmState.EXPUNGED)
    return TemplatePoolRef.objects.filter(
        pinned=False, state__in=[PoolCopyState.DOWNLOADED, PoolCopyState.DOWNLOAD_ERROR]
    ).exclude(Exists(vm_on_copy))


def _pool_over_threshold(pool: PrimaryPool) -> bool:
    if not pool.capacity_bytes:
        return False
    return pool.used_bytes * 100 > pool.capacity_bytes * pool.cache_threshold_percent


def _eviction_candidates(now) -> list[int]:
    """Copies of templates no longer ACTIVE always go; copies of ACTIVE ones only while their
    pool is over its cache threshold, least recently used first, until it would be under."""
    from django.db.models import F

    old_enough = now - timedelta(seconds=settings.STENCIL_POOL_COPY_MIN_AGE_SECONDS)
    unused = _unused_copies().filter(updated_at__lte=old_enough).select_related("pool")
    chosen = list(unused.exclude(template__state=TemplateState.ACTIVE).values_list("pk", flat=True))
    by_pool: dict[int, int] = {}
    lru = unused.filter(template__state=TemplateState.ACTIVE).order_by(
        F("last_used_at").asc(nulls_first=True), "pk"
    )
    for ref in lru:
        pool = ref.pool
        freed = by_pool.get(pool.pk, 0)
        projected = PrimaryPool(
            capacity_bytes=pool.capacity_bytes,
            used_bytes=pool.used_bytes - freed,
            cache_threshold_percent=pool.cache_threshold_percent,
        )
        if _pool_over_threshold(projected):
            chosen.append(ref.pk)
            by_pool[pool.pk] = freed + (ref.physical_size or 0)
    return chosen


@transaction.atomic
def _start_eviction(ref_id: int, marked_before) -> TemplatePoolRef | None:
    """Second pass: re-check under the row lock, then EVICTING."""
    ref = TemplatePoolRef.objects.select_for_update().filter(pk=ref_id).first()
    if (
        ref is None
        or ref.marked_for_eviction_at is None
        or ref.marked_for_eviction_at > marked_before
    ):
        return None
    if not _unused_copies().filter(pk=ref_id).exists():
        return None
    before = ref.state
    ref.start_eviction()
    ref.save()
    record_event(
        ref,
        from_state=before,
        to_state=ref.state,
        actor_label="gc-sweep",
        reason="unused cached copy",
    )
    return ref


def pool_copies_evict(*, now=None) -> dict[str, int]:
    """Mark candidates on one sweep; evict those still unused on a later one (two passes).

    A deploy that uses a copy clears its mark (pool_copy_ensure touches it), so a copy in use
    between the two passes is kept.
    """
    from .agent.tasks import pool_copy_evict_task

    now = now or timezone.now()
    candidates = _eviction_candidates(now)
    marked = TemplatePoolRef.objects.filter(
        pk__in=candidates, marked_for_eviction_at__isnull=True
    ).update(marked_for_eviction_at=now)
    TemplatePoolRef.objects.exclude(pk__in=candidates).filter(
        marked_for_eviction_at__isnull=False,
        state__in=[PoolCopyState.DOWNLOADED, PoolCopyState.DOWNLOAD_ERROR],
    ).update(marked_for_eviction_at=None)
    evicting = 0
    for ref_id in candidates:
        if _start_eviction(ref_id, marked_before=now - timedelta(microseconds=1)):
            evicting += 1
    for ref in TemplatePoolRef.objects.filter(state=PoolCopyState.EVICTING).select_related("pool"):
        host = _host_reaching(ref.pool)
        if host is not None:
            args = {"ref_id": ref.pk, "libvirt_uri": host.libvirt_uri}
            transaction.on_commit(
                lambda a=args, q=host.queue: pool_copy_evict_task.apply_async(kwargs=a, queue=q)
            )
    _enqueue_reconcilers()
    return {"marked": marked, "evicting": evicting}


def pool_copies_evict_removed(*, template_ids: list[int]) -> int:
    """CloudStack's `template.delete.from.primary.storage` (PR #11782): when the sweep removes
    templates, their unpinned copies that no VM disk can be on are evicted at once (EVICTING,
    then the agent's normal evict path deletes the volume and the row), not left for a later
    sweep's two passes. STENCIL_DELETE_FROM_PRIMARY_STORAGE=false leaves them to that. A
    pinned copy keeps its template from removal in the first place. The number of copies
    now EVICTING."""
    if not settings.STENCIL_DELETE_FROM_PRIMARY_STORAGE or not template_ids:
        return 0
    ids = list(
        _unused_copies()
        .filter(template_id__in=template_ids, template__state=TemplateState.REMOVED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    return sum(1 for ref_id in ids if _evict_removed_copy(ref_id))


@transaction.atomic
def _evict_removed_copy(ref_id: int) -> bool:
    """Under the copy's lock: still unused -> EVICTING, and its host told after commit."""
    from .agent.tasks import pool_copy_evict_task

    ref = TemplatePoolRef.objects.select_for_update().select_related("pool").filter(pk=ref_id)
    ref = ref.first()
    if ref is None or not _unused_copies().filter(pk=ref_id).exists():
        return False
    before = ref.state
    ref.start_eviction()
    ref.save()
    record_event(
        ref,
        from_state=before,
        to_state=ref.state,
        actor_label="gc-sweep",
        reason="template removed: deleted from primary storage",
    )
    host = _host_reaching(ref.pool)
    if host is not None:  # else the next eviction run sends it to a host that is up by then
        args = {"ref_id": ref.pk, "libvirt_uri": host.libvirt_uri}
        transaction.on_commit(
            lambda: pool_copy_evict_task.apply_async(kwargs=args, queue=host.queue)
        )
    return True


def _enqueue_reconcilers() -> None:
    """Each sweep also has one Up host per pool check the pool against the database."""
    from .agent.tasks import pool_reconcile_task

    for pool in PrimaryPool.objects.all():
        host = _host_reaching(pool)
        if host is not None:
            args = {"pool_id": pool.pk, "libvirt_uri": host.libvirt_uri}
            transaction.on_commit(
                lambda a=args, q=host.queue: pool_reconcile_task.apply_async(kwargs=a, queue=q)
            )
