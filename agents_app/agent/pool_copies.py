"""Services for template copies on primary pools (seed 001), run by the agent of a host.

Single flight: the (template, pool) row and its state decide who copies. The first deploy
claims the row with a lease and copies; the others wait for the row to become DOWNLOADED.
No Python lock is involved, so this holds across threads, processes and hosts.
"""

import os
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_fsm import can_proceed

from templates_app import leases
from templates_app.choices import StoreRefState, TemplateState
from templates_app.errors import StencilError
from templates_app.events import record_event
from templates_app.images.qemu import QemuImgError
from templates_app.leases import LeaseKeeper
from templates_app.locks import lock_template_shared
from templates_app.models import Template, TemplateStoreRef
from templates_app.storepaths import EXTENSIONS, absolute

from ..choices import PoolCopyState
from ..models import PrimaryPool, TemplatePoolRef
from . import virt
from .direct_download import DirectDownloadFailed

WAIT_POLL_SECONDS = 0.1


def lease_length() -> timedelta:
    return timedelta(seconds=settings.STENCIL_POOL_COPY_LEASE_SECONDS)


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


@transaction.atomic
def _claim(
    template_id: int, pool_id: int, owner: str, *, waited_for_attempt: int | None
) -> tuple[bool, TemplatePoolRef]:
    """(True, row) when this caller must copy; (False, row) when it is ready or being copied.

    A caller that waited for another worker's attempt does not retry that attempt's failure.
    """
    row = pool_copy_row(template_id, pool_id)
    template = lock_template_shared(template_id)
    ref = TemplatePoolRef.objects.select_for_update(of=("self",)).get(pk=row.pk)
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
    if failed_while_waiting or not can_proceed(ref.start_copy):
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
    return ref


@transaction.atomic
def _fail(ref_id: int, owner: str, reason: str) -> None:
    ref = TemplatePoolRef.objects.select_for_update().get(pk=ref_id)
    if ref.lease_owner != owner or ref.state != PoolCopyState.DOWNLOAD_IN_PROGRESS:
        return
    ref.fail_copy()
    ref.error_text = reason[:4000]
    leases.lease_release(ref)
    ref.save()
    record_event(
        ref,
        from_state=PoolCopyState.DOWNLOAD_IN_PROGRESS,
        to_state=ref.state,
        actor_label="agent",
        reason=reason,
    )


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


def _pool_progress(ref_id: int):
    def save(done: int, total: int | None) -> None:
        percent = min(100, done * 100 // total) if total else 0
        # updated_at too: a copy that moves is not "stuck" (templates_app.copy_status).
        TemplatePoolRef.objects.filter(pk=ref_id).update(
            download_percent=percent, updated_at=timezone.now()
        )

    return save


def _download_into_pool(
    ref: TemplatePoolRef, pool: PrimaryPool, conn, host_name: str | None
) -> tuple[str, int, int]:
    """Direct download: the host fetches the URL into the pool (seed 003), no image store."""
    from templates_app.copies import http_headers_of

    from .direct_download import fetch_into_pool, remove_leftovers

    template = ref.template
    pool_dir = Path(virt.pool_info(conn, pool.libvirt_pool_name).path)
    remove_leftovers(pool_dir, ref.volume_name)
    fetched = fetch_into_pool(
        url=template.url,
        pool_dir=pool_dir,
        checksum=template.checksum,
        image_format=template.format,
        headers=http_headers_of(template),
        ca_dir=_trust_dir(host_name),
        progress=_pool_progress(ref.pk),
        temp_name=ref.volume_name,
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
    wait_timeout: float = 600,
) -> TemplatePoolRef:
    """Return the template's DOWNLOADED copy on the pool, making it if nobody else is."""
    owner = leases.new_owner()
    deadline = time.monotonic() + wait_timeout
    waited_for = None
    while True:
        claimed, ref = _claim(template_id, pool_id, owner, waited_for_attempt=waited_for)
        if ref.state == PoolCopyState.DOWNLOADED:
            return ref
        if claimed:
            break
        if waited_for is not None and ref.state == PoolCopyState.DOWNLOAD_ERROR:
            # The copy we waited for failed: report it; the next deploy will retry.
            raise PoolCopyFailed(ref.error_text or "the pool copy failed")
        waited_for = ref.attempts
        if time.monotonic() > deadline:
            raise PoolCopyFailed(f"timed out waiting for the copy of {ref}")
        time.sleep(WAIT_POLL_SECONDS)
    pool = PrimaryPool.objects.get(pk=pool_id)
    ref = TemplatePoolRef.objects.select_related("template").get(pk=ref.pk)
    try:
        with LeaseKeeper(TemplatePoolRef, ref.pk, owner, lease_length()):
            path, size, physical = _copy_bytes(ref, pool, libvirt_uri, host_name)
    except (virt.VirtError, QemuImgError, StencilError, DirectDownloadFailed, OSError) as exc:
        reason = getattr(exc, "message", None) or str(exc)
        _fail(ref.pk, owner, reason)
        raise PoolCopyFailed(reason, retryable=getattr(exc, "retryable", False)) from exc
    return _finish(ref.pk, owner, path=path, size=size, physical=physical)


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
    from ..choices import VmState
    from ..models import VirtualMachine

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
