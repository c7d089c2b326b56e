"""Services for template copies on primary pools (seed 001), run by the agent of a host.

Single flight: the (template, pool) row and its state decide who copies. The first deploy
claims the row with a lease and copies. Nothing waits for it: a deploy that finds the copy
being made records its VM as a waiter on the row (`VirtualMachine.awaited_copy`) and returns;
finishing or failing the copy re-queues every waiter's task in the same transaction. A waiter
whose copy owner died is released by a re-check at the end of the lease, and takes the copy over.
No Python lock is involved, so this holds across threads, processes and hosts.
"""

import logging
import os
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django_fsm import can_proceed

from templates_app import leases
from templates_app.choices import PrimaryPolicy, StoreRefState, TemplateState
from templates_app.errors import StencilError
from templates_app.events import record_event
from templates_app.images.inspection import ImageRejected
from templates_app.images.qemu import QemuImgError
from templates_app.leases import LeaseKeeper
from templates_app.locks import lock_template_shared
from templates_app.models import Template, TemplateStoreRef
from templates_app.storepaths import EXTENSIONS, absolute

from ..choices import PoolCopyState, VmState
from ..models import PrimaryPool, TemplatePoolRef, VirtualMachine
from . import virt
from .direct_download import DirectDownloadFailed
from .failures import describe

logger = logging.getLogger(__name__)

# Failures a copy expects and reports in their own words (anything else: "<Type>: <message>").
EXPECTED = (
    virt.VirtError,
    QemuImgError,
    StencilError,
    DirectDownloadFailed,
    ImageRejected,
    OSError,
)

# Seconds past a copy's lease end before a waiter's re-check looks at it (clock slack).
RECHECK_MARGIN_SECONDS = 2


def lease_length() -> timedelta:
    return timedelta(seconds=settings.STENCIL_POOL_COPY_LEASE_SECONDS)


class PoolCopyInProgress(Exception):
    """Another worker holds a live lease on the copy: not a failure, and nothing waits for it.
    A caller that named a waiting VM is re-queued when the copy finishes or fails."""

    def __init__(self, ref: TemplatePoolRef, message: str):
        super().__init__(message)
        self.ref, self.message = ref, message


class PoolCopyFailed(StencilError):
    """The copy onto the pool failed; the message says why (recorded on the copy too).
    `retryable`: a download that another host of the pool may complete."""

    status_code = 409
    code = "pool_copy_failed"

    def __init__(self, message: str, *, field: str | None = None, retryable: bool = False):
        super().__init__(message, field=field)
        self.retryable = retryable


def store_source_of(template: Template) -> tuple[Path, TemplateStoreRef]:
    """The READY copy on an image store the pool copy is made from (stores are mounted)."""
    ref = (
        TemplateStoreRef.objects.filter(
            template=template, store__isnull=False, state=StoreRefState.READY
        )
        .select_related("store")
        .order_by("pk")
        .first()
    )
    if ref is None:
        raise PoolCopyFailed(f"template '{template}' has no READY copy on an image store")
    return absolute(ref.store, ref.install_path), ref


def pool_volume_name(template: Template) -> str:
    return f"tmpl-{template.unique_name}.{EXTENSIONS[template.format]}"


def pool_copy_row(template_id: int, pool_id: int) -> TemplatePoolRef:
    try:
        with transaction.atomic():
            return TemplatePoolRef.objects.get_or_create(template_id=template_id, pool_id=pool_id)[
                0
            ]
    except IntegrityError:
        # Another deploy inserted it between our get and create: it exists now.
        return TemplatePoolRef.objects.get(template_id=template_id, pool_id=pool_id)


def waiting_message(ref: TemplatePoolRef, vm: VirtualMachine) -> str:
    prefix = "rebuild: " if vm.state == VmState.STOPPED else ""
    return f"{prefix}waiting for the template's copy on pool '{ref.pool.name}'"


@transaction.atomic
def _claim(
    template_id: int,
    pool_id: int,
    owner: str,
    *,
    waited_for_attempt: int | None,
    waiter_vm_id: int | None = None,
) -> tuple[bool, TemplatePoolRef]:
    """(True, row) when this caller must copy; (False, row) when it is ready or being copied.

    A caller that waited for another worker's attempt does not retry that attempt's failure.
    A copy being made by another worker gets `waiter_vm_id` as a waiter, under the copy's row
    lock: `_finish`/`_fail` take that lock too, so they either see the waiter or the waiter
    sees their result here. Nothing is missed, and nobody polls.
    """
    row = pool_copy_row(template_id, pool_id)
    template = lock_template_shared(template_id)
    ref = (
        TemplatePoolRef.objects.select_for_update(of=("self",))
        .select_related("pool")
        .get(pk=row.pk)
    )
    if ref.state == PoolCopyState.DOWNLOADED:
        ref.last_used_at = timezone.now()
        ref.marked_for_eviction_at = None
        ref.save(update_fields=["last_used_at", "marked_for_eviction_at", "updated_at"])
        return False, ref
    # A VM deployed before its template was deleted still gets its disk (seed 000); only
    # REMOVED bytes are gone, and no live VM can point at a REMOVED template.
    if template.state == TemplateState.REMOVED:
        raise PoolCopyFailed(f"template '{template}' is {template.state}")
    failed_while_waiting = (
        ref.state == PoolCopyState.DOWNLOAD_ERROR
        and waited_for_attempt is not None
        and ref.attempts >= waited_for_attempt
    )
    if failed_while_waiting:
        return False, ref
    if not can_proceed(ref.start_copy):
        if waiter_vm_id is not None:
            _add_waiter(ref, waiter_vm_id)
        return False, ref
    before = ref.state
    ref.start_copy()
    leases.lease_claim(ref, owner, lease_length())
    ref.attempts += 1
    ref.error_text = ""
    ref.volume_name = pool_volume_name(template)
    ref.save()
    record_event(
        ref,
        from_state=before,
        to_state=ref.state,
        actor_label="agent",
        reason=f"copy attempt {ref.attempts}",
    )
    return True, ref


# A DOWNLOADED copy used this recently is read without its row lock or a write (below); the
# LRU order of eviction needs last_used_at no finer than this.
RECENT_USE_SECONDS = 60


def _recently_used_copy(template_id: int, pool_id: int, *, vm_id: int) -> TemplatePoolRef | None:
    """The cheap path of a deploy onto a copy in use: one statement, a shared row lock, no
    write (the locked path serializes deploys of one template on one pool on the copy's row
    and updates it every time). None when the locked path must decide: the copy is not
    DOWNLOADED, is marked for eviction (the locked path clears the mark), was not used in the
    last RECENT_USE_SECONDS, or the VM is not an alive VM of this template on this pool.

    Why eviction cannot take the copy from under this VM: the VM row was committed before its
    deploy task was sent, and this statement requires it. Every eviction moves the copy to
    EVICTING in a transaction that holds the copy's FOR UPDATE lock and checks there that no
    alive VM of the template is on the pool. FOR SHARE conflicts with that lock: either the
    eviction locked first, and this read waits for its commit and finds EVICTING (no row); or
    this read locked first, and the eviction's check runs after the VM's commit and sees it.
    Afterwards the VM row keeps the copy, as it does once the locked path has committed.
    Each eviction also shuts the window on its own: the sweep evicts only marked copies (never
    read here), an operator's evict holds the template's lock (a new VM waits for it), a
    removed template's holds the pool's row (the new VM's foreign key waits for it; see
    tests/agents_app/test_pool_eviction.py). Shared locks do not wait for one another, so
    concurrent deploys no longer queue on the copy's row.
    """
    if connection.vendor != "postgresql":
        return None
    refs, vms = TemplatePoolRef._meta.db_table, VirtualMachine._meta.db_table
    rows = TemplatePoolRef.objects.raw(
        f'SELECT r.* FROM "{refs}" r WHERE r."template_id" = %s AND r."pool_id" = %s '
        f'AND r."state" = %s AND r."marked_for_eviction_at" IS NULL '
        f'AND r."last_used_at" > %s AND EXISTS (SELECT 1 FROM "{vms}" v WHERE v."id" = %s '
        f'AND v."template_id" = r."template_id" AND v."pool_id" = r."pool_id" '
        f'AND v."state" <> %s) FOR SHARE OF r',
        [
            template_id,
            pool_id,
            PoolCopyState.DOWNLOADED,
            timezone.now() - timedelta(seconds=RECENT_USE_SECONDS),
            vm_id,
            VmState.EXPUNGED,
        ],
    )
    return next(iter(rows), None)


def pool_copy_wait_if_in_progress(*, vm_id: int) -> bool:
    """A deploy that arrives while another worker makes its template's copy on its pool: the
    VM is recorded as waiting on that copy in one transaction, without claiming the VM (its
    deploy does no host work before the copy's finish wakes it). True when it now waits;
    False: the deploy goes its usual way (no copy in progress, or it is free to take).

    One statement when there is nothing to wait for. Under the copy's row lock, as in `_claim`:
    `_finish` and `_fail` take it too, so they see this waiter or this sees their result.
    During a storm the copy shares the disk with every commit: each waiter commits once here
    instead of three times (claim, waiter, claim given back).
    """
    cached = Q(template__primary_policy=PrimaryPolicy.CACHE) | Q(template__direct_download=True)
    deploy = VirtualMachine.objects.filter(
        cached,
        pk=vm_id,
        template_id=OuterRef("template_id"),
        pool_id=OuterRef("pool_id"),
        state=VmState.STARTING,
        root_disk_path="",
    )
    in_progress = TemplatePoolRef.objects.filter(
        Exists(deploy), state=PoolCopyState.DOWNLOAD_IN_PROGRESS
    )
    ref_id = in_progress.values_list("pk", flat=True).first()
    if ref_id is None:
        return False
    with transaction.atomic():
        ref = (
            TemplatePoolRef.objects.select_for_update(of=("self",))
            .select_related("pool")
            .filter(pk=ref_id)
            .first()
        )
        if ref is None or ref.state != PoolCopyState.DOWNLOAD_IN_PROGRESS or ref.lease_is_free():
            return False
        if not VirtualMachine.objects.filter(pk=vm_id, state=VmState.STARTING).exists():
            return False
        _add_waiter(ref, vm_id)
    return True


def _add_waiter(ref: TemplatePoolRef, vm_id: int) -> None:
    """Record that the VM waits on the copy (in the caller's transaction, the copy locked), and
    schedule its re-check at the end of the copy's lease."""
    vm = VirtualMachine.objects.select_for_update(of=("self",)).select_related("host").get(pk=vm_id)
    message = waiting_message(ref, vm)
    if vm.awaited_copy_id != ref.pk:
        record_event(
            vm, from_state=vm.state, to_state=vm.state, actor_label="agent", reason=message
        )
    vm.awaited_copy = ref
    vm.error_text = message
    vm.save(update_fields=["awaited_copy", "error_text", "updated_at"])
    _schedule_recheck(ref, vm)


def _schedule_recheck(ref: TemplatePoolRef, vm: VirtualMachine) -> None:
    """The safety net for a copy whose worker died: then nobody finishes or fails it, and its
    waiters would wait forever. One re-check per waiter per lease length (60 s by default), when
    a dead worker's lease has run out: a live worker renews its lease, and its finish or failure
    re-queues the waiters long before. This is not polling; the normal wake-up is `_finish`."""
    from .tasks import pool_copy_waiter_recheck_task

    now = timezone.now()
    if ref.state == PoolCopyState.DOWNLOAD_IN_PROGRESS and ref.lease_expires_at:
        countdown = max((ref.lease_expires_at - now).total_seconds(), 0.0)
    else:
        countdown = lease_length().total_seconds()
    countdown += RECHECK_MARGIN_SECONDS
    queue, vm_id = vm.host.queue, vm.pk
    transaction.on_commit(
        lambda: pool_copy_waiter_recheck_task.apply_async(
            kwargs={"vm_id": vm_id}, queue=queue, countdown=countdown
        )
    )


def _wake_waiters(ref: TemplatePoolRef, *, failed_attempt: int | None = None) -> list[int]:
    """Re-queue the task of every VM waiting on the copy (the caller holds the copy's row lock),
    each to its own host's queue, after commit: a STARTING VM's deploy, a STOPPED one's rebuild.
    `failed_attempt`: the attempt that failed, which each waiter then reports as its own error.
    Clearing `awaited_copy` here makes the wake-up single: a later re-check finds nothing."""
    from .tasks import vm_deploy_task, vm_deploys_woken_task, vm_rebuild_task

    waiters = list(
        VirtualMachine.objects.filter(awaited_copy=ref).select_related("host").order_by("pk")
    )
    if not waiters:
        return []
    VirtualMachine.objects.filter(pk__in=[vm.pk for vm in waiters]).update(
        awaited_copy=None, error_text="", updated_at=timezone.now()
    )
    kwargs = {} if failed_attempt is None else {"waited_for_attempt": failed_attempt}
    sends = []
    deploys: dict[str, list[int]] = {}  # a finished copy's deploys, per host queue
    for vm in waiters:
        task = {VmState.STARTING: vm_deploy_task, VmState.STOPPED: vm_rebuild_task}.get(vm.state)
        if task is None or vm.host_id is None:
            continue
        if task is vm_deploy_task and failed_attempt is None:
            deploys.setdefault(vm.host.queue, []).append(vm.pk)
        else:
            sends.append((task, {"vm_id": vm.pk, **kwargs}, vm.host.queue))
    for queue, vm_ids in deploys.items():
        if len(vm_ids) == 1:
            sends.append((vm_deploy_task, {"vm_id": vm_ids[0]}, queue))
        else:  # one pass for all of them (vms.vm_deploys_woken_on_host)
            sends.append((vm_deploys_woken_task, {"vm_ids": vm_ids}, queue))

    def send() -> None:
        for task, task_kwargs, queue in sends:
            task.apply_async(kwargs=task_kwargs, queue=queue)

    transaction.on_commit(send)
    return [vm.pk for vm in waiters]


@transaction.atomic
def pool_copy_waiter_release(*, vm_id: int) -> bool:
    """A waiter's re-check (see `_schedule_recheck`): True when the VM waited on a copy that no
    live worker holds any more (its owner died, or nobody woke it): the VM is no longer waiting
    and the caller runs its task now, which takes the copy over. False when there is nothing to
    do (already woken) or the copy is still held: then the re-check is scheduled again."""
    awaited = VirtualMachine.objects.filter(pk=vm_id).values_list("awaited_copy_id", flat=True)
    ref_id = awaited.first()
    if ref_id is None:
        return False
    # Lock order: the copy, then the VM (as in `_claim` and `_finish`).
    ref = TemplatePoolRef.objects.select_for_update().filter(pk=ref_id).first()
    vm = VirtualMachine.objects.select_for_update(of=("self",)).select_related("host").get(pk=vm_id)
    if ref is None or vm.awaited_copy_id != ref_id:
        return False
    if ref.state == PoolCopyState.DOWNLOAD_IN_PROGRESS and not ref.lease_is_free():
        _schedule_recheck(ref, vm)
        return False
    vm.awaited_copy = None
    vm.error_text = ""
    vm.save(update_fields=["awaited_copy", "error_text", "updated_at"])
    return True


@transaction.atomic
def _finish(ref_id: int, owner: str, *, path: str, size: int, physical: int) -> TemplatePoolRef:
    ref = TemplatePoolRef.objects.select_for_update().get(pk=ref_id)
    if ref.lease_owner != owner or ref.state != PoolCopyState.DOWNLOAD_IN_PROGRESS:
        raise PoolCopyFailed("the copy's lease was taken over by another worker")
    ref.finish_copy()
    ref.install_path = path
    ref.size = size
    ref.physical_size = physical
    ref.download_percent = 100
    leases.lease_release(ref)
    ref.last_used_at = timezone.now()
    ref.save()
    record_event(
        ref,
        from_state=PoolCopyState.DOWNLOAD_IN_PROGRESS,
        to_state=ref.state,
        actor_label="agent",
        reason="copied from image store",
    )
    _wake_waiters(ref)
    return ref


@transaction.atomic
def _fail(ref_id: int, owner: str, reason: str) -> None:
    ref = TemplatePoolRef.objects.select_for_update().get(pk=ref_id)
    if ref.lease_owner != owner or ref.state != PoolCopyState.DOWNLOAD_IN_PROGRESS:
        return
    pool_copy_end_in_error(ref, reason, actor_label="agent")


def pool_copy_end_in_error(ref: TemplatePoolRef, reason: str, *, actor_label: str) -> list[int]:
    """A copy in progress (row locked by the caller) ends in DOWNLOAD_ERROR with `reason`: its
    lease released, an event, and its waiters woken to report the failure (their VM ids).
    The one way a copy fails, whether its copier, a delete or the reaper ends it."""
    ref.fail_copy()
    ref.error_text = reason[:4000]
    leases.lease_release(ref)
    ref.save()
    record_event(
        ref,
        from_state=PoolCopyState.DOWNLOAD_IN_PROGRESS,
        to_state=ref.state,
        actor_label=actor_label,
        reason=reason,
    )
    return _wake_waiters(ref, failed_attempt=ref.attempts)


def _copy_bytes(
    ref: TemplatePoolRef, pool: PrimaryPool, libvirt_uri: str, host_name: str | None = None
) -> tuple[str, int, int]:
    template = ref.template
    conn = virt.connection(libvirt_uri)
    # A worker that died mid-copy left a partial file: it goes before the new copy starts.
    virt.delete_volume(conn, pool.libvirt_pool_name, ref.volume_name)
    if template.direct_download:
        return _download_into_pool(ref, pool, conn, host_name)
    source, store_ref = store_source_of(template)
    fmt = template.format.lower()
    path = virt.write_full_copy(
        conn,
        pool.libvirt_pool_name,
        ref.volume_name,
        source_path=str(source),
        source_format=fmt,
        fmt=fmt,
        capacity=store_ref.size or 0,
    )
    return path, store_ref.size or 0, Path(path).stat().st_size


def _pool_progress(ref_id: int, owner: str):
    """Record a direct download's progress while this attempt holds the copy; a copy that was
    cancelled (its template deleted) or taken over aborts the download, which then removes
    its own temporary file."""

    def save(done: int, total: int | None) -> None:
        percent = min(100, done * 100 // total) if total else 0
        # updated_at too: a copy that moves is not "stuck" (templates_app.copy_status).
        moved = TemplatePoolRef.objects.filter(pk=ref_id, lease_owner=owner).update(
            download_percent=percent, updated_at=timezone.now()
        )
        if not moved:
            raise DirectDownloadFailed(f"pool copy {ref_id}: cancelled or taken over")

    return save


def _download_into_pool(
    ref: TemplatePoolRef, pool: PrimaryPool, conn, host_name: str | None
) -> tuple[str, int, int]:
    """Direct download: the host fetches the URL into the pool (seed 003), no image store."""
    from templates_app.copies import http_headers_of

    from .direct_download import fetch_into_pool, remove_leftovers

    template = ref.template
    remove_leftovers(Path(virt.pool_info(conn, pool.libvirt_pool_name).path), ref.volume_name)
    # Free space once our own leftovers are gone: what the download and the image may take.
    info = virt.pool_info(conn, pool.libvirt_pool_name)
    pool_dir = Path(info.path)
    fetched = fetch_into_pool(
        url=template.url,
        pool_dir=pool_dir,
        checksum=template.checksum,
        image_format=template.format,
        headers=http_headers_of(template),
        ca_dir=_trust_dir(host_name),
        progress=_pool_progress(ref.pk, ref.lease_owner),
        temp_name=ref.volume_name,
        room=info.available,
        room_name=f"the free space of pool '{pool.name}'",
    )
    try:
        path = virt.create_volume(
            conn,
            pool.libvirt_pool_name,
            ref.volume_name,
            capacity=fetched.virtual_size,
            fmt=template.format.lower(),
        )
        os.replace(fetched.path, path)
        virt.refresh_pool(conn, pool.libvirt_pool_name)
    except BaseException:
        fetched.path.unlink(missing_ok=True)
        virt.delete_volume(conn, pool.libvirt_pool_name, ref.volume_name)
        raise
    return path, fetched.virtual_size, fetched.size


def _trust_dir(host_name: str | None) -> str | None:
    """Certificates installed on this host for HTTPS direct downloads (if it has any)."""
    if not host_name:
        return None
    from .trust import ca_dir_for

    return ca_dir_for(host_name)


def pool_copy_ensure(
    *,
    template_id: int,
    pool_id: int,
    libvirt_uri: str,
    host_name: str | None = None,
    waiter_vm_id: int | None = None,
    waited_for_attempt: int | None = None,
) -> TemplatePoolRef:
    """Return the template's DOWNLOADED copy on the pool, making it if nobody else is.

    It never waits: while another worker's live lease holds the copy, PoolCopyInProgress is
    raised at once. With `waiter_vm_id`, that VM is recorded as waiting on the copy, and its
    deploy (or rebuild) is re-queued when the copy finishes or fails (`_wake_waiters`).
    `waited_for_attempt`: a woken waiter's attempt number; that attempt's failure is raised as
    PoolCopyFailed with the copy's error (the next deploy retries the copy), not retried here.
    """
    if waiter_vm_id is not None:
        ready = _recently_used_copy(template_id, pool_id, vm_id=waiter_vm_id)
        if ready is not None:
            return ready
    owner = leases.new_owner()
    claimed, ref = _claim(
        template_id,
        pool_id,
        owner,
        waited_for_attempt=waited_for_attempt,
        waiter_vm_id=waiter_vm_id,
    )
    if ref.state == PoolCopyState.DOWNLOADED:
        return ref
    if not claimed:
        if ref.state == PoolCopyState.DOWNLOAD_ERROR:
            raise PoolCopyFailed(ref.error_text or "the pool copy failed")
        state = ref.get_state_display().lower()
        raise PoolCopyInProgress(ref, f"the template's copy on pool '{ref.pool.name}': {state}")
    pool = PrimaryPool.objects.get(pk=pool_id)
    ref = TemplatePoolRef.objects.select_related("template").get(pk=ref.pk)
    try:
        with LeaseKeeper(TemplatePoolRef, ref.pk, owner, lease_length()):
            path, size, physical = _copy_bytes(ref, pool, libvirt_uri, host_name)
    except Exception as exc:  # any failure ends the attempt: nothing stays in progress
        if isinstance(exc, EXPECTED):
            reason = getattr(exc, "message", None) or str(exc)
        else:
            logger.exception("pool copy %s: unexpected failure", ref.pk)
            reason = describe(exc)
        _discard_partial(ref, pool, libvirt_uri, owner)
        _fail(ref.pk, owner, reason)
        raise PoolCopyFailed(reason, retryable=getattr(exc, "retryable", False)) from exc
    return _finish(ref.pk, owner, path=path, size=size, physical=physical)


def _discard_partial(ref: TemplatePoolRef, pool: PrimaryPool, libvirt_uri: str, owner: str) -> None:
    """A failed attempt leaves no partial copy behind (while it still owns the copy: a worker
    that lost its lease must not delete what the new owner writes). Best effort: the next
    attempt deletes a leftover before it starts anyway."""
    from .direct_download import remove_leftovers

    if not TemplatePoolRef.objects.filter(pk=ref.pk, lease_owner=owner).exists():
        return
    try:
        conn = virt.connection(libvirt_uri)
        virt.delete_volume(conn, pool.libvirt_pool_name, ref.volume_name)
        remove_leftovers(Path(pool.path), ref.volume_name)
    except Exception:
        logger.exception("pool copy %s: could not remove the partial copy", ref.pk)


def pool_copy_delete_on_host(*, ref_id: int, libvirt_uri: str) -> bool:
    """Agent: delete an EVICTING copy's volume, then its row. A repeat finds nothing to do."""
    ref = TemplatePoolRef.objects.select_related("pool").filter(pk=ref_id).first()
    if ref is None or ref.state != PoolCopyState.EVICTING:
        return False
    conn = virt.connection(libvirt_uri)
    if ref.volume_name:
        virt.delete_volume(conn, ref.pool.libvirt_pool_name, ref.volume_name)
    with transaction.atomic():
        locked = TemplatePoolRef.objects.select_for_update().filter(
            pk=ref_id, state=PoolCopyState.EVICTING
        )
        if not locked.exists():
            return False
        # A deploy that met the copy while it was being evicted waits on it: it copies anew.
        _wake_waiters(ref)
        record_event(
            ref,
            from_state=PoolCopyState.EVICTING,
            to_state="DELETED",
            actor_label="agent",
            reason="evicted from pool",
        )
        locked.delete()
    return True


# Reconciler --------------------------------------------------------------------------------


@transaction.atomic
def _flag_vanished(ref_id: int) -> bool:
    ref = TemplatePoolRef.objects.select_for_update().get(pk=ref_id)
    if ref.state != PoolCopyState.DOWNLOADED or Path(ref.install_path).exists():
        return False
    ref.lose_file()
    ref.error_text = "file vanished from the pool (reconciler)"
    ref.save()
    record_event(
        ref,
        from_state=PoolCopyState.DOWNLOADED,
        to_state=ref.state,
        actor_label="reconciler",
        reason=ref.error_text,
    )
    return True


def pool_reconcile(*, pool_id: int, libvirt_uri: str) -> dict[str, list[str]]:
    """Agent: flag copy rows whose files vanished; report files the database does not know.

    Unknown files are only reported: a file may belong to work that is still being written.
    """
    pool = PrimaryPool.objects.get(pk=pool_id)
    virt.refresh_pool(virt.connection(libvirt_uri), pool.libvirt_pool_name)
    flagged = [
        ref.install_path
        for ref in TemplatePoolRef.objects.filter(pool=pool, state=PoolCopyState.DOWNLOADED)
        if _flag_vanished(ref.pk)
    ]
    known = set(
        TemplatePoolRef.objects.filter(pool=pool)
        .exclude(install_path="")
        .values_list("install_path", flat=True)
    )
    known |= set(
        VirtualMachine.objects.filter(pool=pool)
        .exclude(root_disk_path="")
        .exclude(state=VmState.EXPUNGED, snapshots__isnull=True)
        .values_list("root_disk_path", flat=True)
    )
    known_names = {Path(path).name for path in known}
    known_names |= set(
        TemplatePoolRef.objects.filter(pool=pool)
        .exclude(volume_name="")
        .values_list("volume_name", flat=True)
    )
    unknown = sorted(
        str(path)
        for path in Path(pool.path).iterdir()
        if path.is_file() and path.name not in known_names
    )
    return {"flagged": flagged, "unknown": unknown}


CANCELLED_BY_DELETE = "cancelled: the template was deleted"


def pool_copies_cancel(*, template_ids: list[int]) -> int:
    """The templates were deleted: stop their direct downloads into pools that no deploy needs
    (a pin or a prepare). A copy a STARTING VM of that template on that pool deploys from goes
    on: a VM deployed before its template was deleted still gets its disk (seed 000). The
    downloading agent loses the lease, aborts at its next progress write and removes its
    temporary file."""
    deploying = VirtualMachine.objects.filter(
        template_id=OuterRef("template_id"), pool_id=OuterRef("pool_id"), state=VmState.STARTING
    )
    cancelled = 0
    candidates = TemplatePoolRef.objects.filter(
        template_id__in=template_ids,
        template__direct_download=True,
        state=PoolCopyState.DOWNLOAD_IN_PROGRESS,
    ).exclude(Exists(deploying))
    for ref_id in list(candidates.values_list("pk", flat=True)):
        with transaction.atomic():
            ref = TemplatePoolRef.objects.select_for_update().get(pk=ref_id)
            if ref.state != PoolCopyState.DOWNLOAD_IN_PROGRESS:
                continue
            pool_copy_end_in_error(ref, CANCELLED_BY_DELETE, actor_label="delete")
            cancelled += 1
    return cancelled
