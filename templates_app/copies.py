"""Services for template copies on image stores: download, verify, inspect, mark READY.

The storage worker (Celery queue `storage`) runs `store_copy_download`. It claims the copy under
a row lock with a lease, works outside any transaction, and finishes under the lock again. A
worker that dies leaves a lease that runs out; the next attempt takes the copy over.

The bytes come from a READY copy on another store when there is one (same zone first, then
another zone: a file copy, no re-download), else from the template's URL (`_fetch`).
"""

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_fsm import can_proceed

from . import leases, storepaths
from .choices import DownloadState, StoreRefState, TemplateState
from .errors import StencilError
from .events import record_copy_event, record_event
from .images.downloader import DownloadError, DownloadResult, download_to_file
from .images.headers import header_pairs
from .images.inspection import ImageRejected, inspect_image
from .images.qemu import QemuImgError
from .images.redaction import known_secrets
from .images.urlsafety import UnsafeUrl
from .locks import lock_copy, lock_template
from .models import Account, Template, TemplateStoreRef
from .signals import send_store_copy_ready_on_commit

logger = logging.getLogger(__name__)
COPY_CHUNK = 1 << 20


def lease_length() -> timedelta:
    """How long a store copy's lease lasts unrenewed (STENCIL_STORE_COPY_LEASE_SECONDS): a dead
    worker's copy is taken over this long after its last renewal."""
    return timedelta(seconds=settings.STENCIL_STORE_COPY_LEASE_SECONDS)


def http_headers_of(template: Template) -> dict[str, str]:
    """The template's HTTP_HEADER details as request headers (both spellings, see headers.py)."""
    pairs = header_pairs((d.key, d.value) for d in template.details.all())
    return {name: value for name, value in pairs if name}


@transaction.atomic
def _claim(ref_id: int, owner: str) -> TemplateStoreRef | None:
    """Take the copy for this worker, or None when there is nothing to do (a repeat is a no-op)."""
    template_id = TemplateStoreRef.objects.values_list("template_id", flat=True).get(pk=ref_id)
    template = lock_template(template_id)  # lock order: template -> copy
    ref = lock_copy(ref_id)
    if template.state != TemplateState.ACTIVE or ref.store is None:
        return None
    if ref.state not in (StoreRefState.ALLOCATED, StoreRefState.CREATING):
        return None
    if not can_proceed(ref.start_download):
        return None  # another worker holds a live lease
    before = ref.download_state
    ref.step("start_download")
    ref.install_path = storepaths.relative_install_path(template)
    leases.lease_claim(ref, owner, lease_length())
    ref.attempts += 1
    ref.error_text = ""
    ref.download_percent = 0
    ref.downloaded_bytes = 0
    ref.save()
    record_copy_event(
        ref, before=before, actor_label="storage-worker", reason=f"download attempt {ref.attempts}"
    )
    return ref


class QuotaExceeded(Exception):
    """The account has no secondary storage left for another copy."""

    def __init__(self, account_id: int, room: int):
        self.message = (
            f"account {account_id} has no secondary storage left ({room} bytes under its "
            "max_secondary_bytes): nothing was downloaded"
        )
        super().__init__(self.message)


QUOTA_NAME = "the account's max_secondary_bytes"


def _secondary_room(account_id: int) -> int | None:
    """Bytes the account may still store (None: no limit); a download stops past them."""
    account = Account.objects.get(pk=account_id)
    if account.max_secondary_bytes is None:
        return None
    return account.max_secondary_bytes - account.used_secondary_bytes


class LeaseLost(Exception):
    """Another worker took the copy over, or its template was deleted: stop, touch nothing."""


def _progress_saver(ref_id: int, owner: str):
    """Record progress and renew the lease (about once a second); a lost lease aborts the
    download, which then deletes only its own temporary file."""

    def save(done: int, total: int | None) -> None:
        percent = min(100, done * 100 // total) if total else 0
        if not leases.lease_renew(
            TemplateStoreRef,
            ref_id,
            owner,
            lease_length(),
            downloaded_bytes=done,
            download_percent=percent,
            updated_at=timezone.now(),
        ):
            raise LeaseLost(f"copy {ref_id}: the lease of attempt {owner[:8]} is gone")

    return save


def _properties(template: Template, ref_path: Path, info, sha256: str) -> dict[str, object]:
    return {
        "uniquename": template.unique_name,
        "filename": ref_path.name,
        "id": template.pk,
        "uuid": template.uuid,
        "format": template.format,
        "checksum": template.checksum,
        "sha256": sha256,
        "size": info.virtual_size,
        "virtualsize": info.virtual_size,
        "physicalsize": ref_path.stat().st_size,
    }


@transaction.atomic
def _finish(
    ref_id: int, owner: str, *, temp: Path, image: Path, info, sha256: str, physical_size: int
) -> bool:
    """Under the copy's lock, and only while this attempt holds the lease: move the verified
    temporary file into place, write template.properties, and mark the copy READY. False
    (nothing moved) when the lease or the template went meanwhile."""
    ref = lock_copy(ref_id)
    if ref.lease_owner != owner or ref.download_state != DownloadState.DOWNLOAD_IN_PROGRESS:
        return False
    if ref.state != StoreRefState.CREATING:
        return False  # the sweep removed the template meanwhile: the bytes go with it
    temp.replace(image)
    storepaths.write_properties(image.parent, _properties(ref.template, image, info, sha256))
    ref.step("finish_download")
    ref.size = info.virtual_size
    ref.physical_size = physical_size
    ref.sha256 = sha256
    ref.charged_bytes = physical_size
    ref.download_percent = 100
    ref.downloaded_bytes = physical_size
    leases.lease_release(ref)
    ref.save()
    Account.objects.filter(pk=ref.template.account_id).update(
        used_secondary_bytes=F("used_secondary_bytes") + physical_size
    )
    record_copy_event(
        ref,
        before=DownloadState.DOWNLOAD_IN_PROGRESS,
        actor_label="storage-worker",
        reason="verified",
    )
    send_store_copy_ready_on_commit(template_id=ref.template_id, ref_id=ref.pk)
    return True


@transaction.atomic
def _fail(ref_id: int, owner: str, reason: str) -> None:
    """Record the failure, if this attempt still holds the lease (else it is not ours)."""
    ref = lock_copy(ref_id)
    if ref.lease_owner != owner or ref.download_state != DownloadState.DOWNLOAD_IN_PROGRESS:
        return
    ref.step("fail_download")
    ref.error_text = reason[:4000]
    leases.lease_release(ref)
    ref.save()
    record_copy_event(
        ref, before=DownloadState.DOWNLOAD_IN_PROGRESS, actor_label="storage-worker", reason=reason
    )


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            logger.warning("could not delete %s", path)


def _remove_stale_temps(image: Path) -> None:
    """Delete the temporary files earlier attempts at this image left (a killed worker's
    `.<name>.part-<owner>`, and the downloader's own `..<name>.part-<owner>.part-<random>`).
    Called by the attempt that just claimed the lease, before it writes: an earlier attempt
    still running has lost its lease, stops at its next renewal and renames nothing."""
    if not image.parent.is_dir():
        return
    for path in image.parent.iterdir():
        if path.name.startswith((f".{image.name}.part-", f"..{image.name}.part-")):
            _remove_quietly(path)


def store_copy_download(*, ref_id: int) -> TemplateStoreRef:
    """Fill a copy on its image store (from another store's READY copy, else the URL); READY
    only when verified and inspected.

    Idempotent: a copy that is READY, taken by a live worker, or whose template is no longer
    ACTIVE is left as it is. The bytes go to this attempt's own temporary file, renamed into
    place only by the lease holder; whatever goes wrong (even an unexpected exception) ends in
    DOWNLOAD_ERROR with the reason, never in progress, and removes only that temporary file.
    """
    owner = leases.new_owner()
    ref = _claim(ref_id, owner)
    if ref is None:
        return TemplateStoreRef.objects.get(pk=ref_id)
    template = ref.template
    image = storepaths.absolute(ref.store, ref.install_path)
    image.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(image)
    temp = image.with_name(f".{image.name}.part-{owner[:8]}")
    room = _secondary_room(template.account_id)
    # The header values are secrets whatever their names: hidden in every log line and
    # stored error this attempt writes.
    with known_secrets(http_headers_of(template).values()):
        try:
            if room is not None and room <= 0:
                raise QuotaExceeded(template.account_id, room)
            result = _fetch(ref, temp, owner=owner, room=room)
            with leases.LeaseKeeper(TemplateStoreRef, ref.pk, owner, lease_length()):
                info = inspect_image(temp, template.format, room=room, room_name=QUOTA_NAME)
            finished = _finish(
                ref.pk,
                owner,
                temp=temp,
                image=image,
                info=info,
                sha256=result.sha256,
                physical_size=result.size,
            )
        except Exception as exc:  # any failure ends the attempt: nothing stays in progress
            _remove_quietly(temp)
            known = (DownloadError, UnsafeUrl, ImageRejected, OSError, LeaseLost, QuotaExceeded)
            if not isinstance(exc, known):
                logger.exception("copy %s: unexpected failure", ref.pk)
            reason = _reason(exc)
            if room is not None and isinstance(exc, DownloadError) and "limit of" in reason:
                reason = f"{reason}: the account's max_secondary_bytes leaves {room} bytes"
            _fail(ref.pk, owner, reason)
            return TemplateStoreRef.objects.get(pk=ref_id)
    if not finished:
        _remove_quietly(temp)
    return TemplateStoreRef.objects.get(pk=ref_id)


def copy_sources(ref: TemplateStoreRef) -> list[TemplateStoreRef]:
    """READY copies of the same template on other stores that are not DISABLED, the copy's own
    zone first (a local file copy beats a download), then the other zones, oldest first."""
    from .choices import ImageStoreState

    others = (
        TemplateStoreRef.objects.filter(
            template_id=ref.template_id, state=StoreRefState.READY, store__isnull=False
        )
        .exclude(pk=ref.pk)
        .exclude(store__state=ImageStoreState.DISABLED)
        .exclude(install_path="")
        .select_related("store")
        .order_by("pk")
    )
    zone_id = ref.store.zone_id if ref.store else None
    return sorted(others, key=lambda other: other.store.zone_id != zone_id)


def _copy_from_store(
    source: TemplateStoreRef, temp: Path, *, owner: str, ref_id: int, room: int | None
) -> DownloadResult:
    """Store to store: read the source copy's file in chunks into `temp`, hashing as it goes
    and saving progress like a download; the hash must be the one the source was verified
    with, so a file that rotted on the source store is never spread."""
    path = storepaths.absolute(source.store, source.install_path)
    total = path.stat().st_size
    if room is not None and total > room:
        raise DownloadError(f"the copy needs {total} bytes, over the limit of {room} bytes")
    digest = hashlib.sha256()
    save = _progress_saver(ref_id, owner)
    done = 0
    last_save = 0.0
    with path.open("rb") as reader, temp.open("wb") as writer:
        while chunk := reader.read(COPY_CHUNK):
            writer.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last_save >= 1:
                save(done, total)
                last_save = now
    save(done, total)
    sha256 = digest.hexdigest()
    if source.sha256 and sha256 != source.sha256:
        raise DownloadError(
            f"the copy on store '{source.store}' does not match its recorded sha256 "
            f"({sha256} != {source.sha256})"
        )
    return DownloadResult(
        path=temp, size=done, sha256=sha256, digest=sha256, content_type="", final_url=""
    )


def _fetch(ref: TemplateStoreRef, temp: Path, *, owner: str, room: int | None) -> DownloadResult:
    """Fill `temp` with the template's bytes: from a READY copy on another store when there is
    one (same zone first, then cross-zone; no re-download), else from the template's URL.
    A source store that fails (file gone, hash wrong) is skipped for the next one."""
    template = ref.template
    failures = []
    for source in copy_sources(ref):
        try:
            result = _copy_from_store(source, temp, owner=owner, ref_id=ref.pk, room=room)
        except (OSError, DownloadError, ValueError) as exc:
            _remove_quietly(temp)
            failures.append(f"store '{source.store}': {exc}")
            logger.warning("copy %s: source %s failed: %s", ref.pk, source.pk, exc)
            continue
        logger.info("copy %s: copied from store copy %s", ref.pk, source.pk)
        return result
    if not template.url:
        reasons = "; ".join(failures) or "no READY copy on any store"
        raise DownloadError(f"nothing to copy from: the template has no URL and {reasons}")
    return download_to_file(
        template.url,
        temp,
        checksum=template.checksum,
        headers=http_headers_of(template),
        max_bytes=room,
        progress=_progress_saver(ref.pk, owner),
        connect_timeout=settings.STENCIL_DOWNLOAD_CONNECT_TIMEOUT,
        read_timeout=settings.STENCIL_DOWNLOAD_READ_TIMEOUT,
        stall_timeout=settings.STENCIL_DOWNLOAD_STALL_TIMEOUT,
        max_attempts=settings.STENCIL_DOWNLOAD_MAX_ATTEMPTS,
        backoff_base=settings.STENCIL_DOWNLOAD_BACKOFF_BASE,
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ImageRejected):
        return f"image rejected: {exc.reason}"
    message = getattr(exc, "message", None) or str(exc)
    expected = (DownloadError, UnsafeUrl, LeaseLost, QuotaExceeded)
    return message if isinstance(exc, expected) else f"{type(exc).__name__}: {message}"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def store_copy_from_local(*, ref_id: int, write: Callable[[Path], None]) -> TemplateStoreRef:
    """Fill a copy from bytes made here (e.g. a VM's disk converted by its host): `write`
    produces the image at a temporary path in the store; it is inspected like a download and
    renamed only when it passes. Idempotent like store_copy_download."""
    owner = leases.new_owner()
    ref = _claim(ref_id, owner)
    if ref is None:
        return TemplateStoreRef.objects.get(pk=ref_id)
    template = ref.template
    image = storepaths.absolute(ref.store, ref.install_path)
    image.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(image)
    temp = image.with_name(f".{image.name}.part-{owner[:8]}")
    try:
        with leases.LeaseKeeper(TemplateStoreRef, ref.pk, owner, lease_length()):
            write(temp)
            sha256 = _sha256_of(temp)
            room = _secondary_room(template.account_id)
            info = inspect_image(temp, template.format, room=room, room_name=QUOTA_NAME)
        finished = _finish(
            ref.pk,
            owner,
            temp=temp,
            image=image,
            info=info,
            sha256=sha256,
            physical_size=temp.stat().st_size,
        )
    except Exception as exc:  # any failure ends the attempt: nothing stays in progress
        _remove_quietly(temp)
        if not isinstance(exc, (ImageRejected, QemuImgError, OSError)):
            logger.exception("copy %s: unexpected failure", ref.pk)
        _fail(ref.pk, owner, _reason(exc))
        return TemplateStoreRef.objects.get(pk=ref_id)
    if not finished:
        _remove_quietly(temp)
    return TemplateStoreRef.objects.get(pk=ref_id)


# Operators -----------------------------------------------------------------------------------


class StoreCopyNotRetryable(StencilError):
    """Only a failed download of an ACTIVE template's copy can be retried (409 naming the state)."""

    status_code = 409
    code = "conflict"

    def __init__(self, ref: TemplateStoreRef, reason: str):
        super().__init__(
            f"cannot retry the download of store copy '{ref}' in download_state "
            f"{ref.download_state}: {reason}"
        )
        self.state = ref.download_state


class NothingToRetry(StencilError):
    """A template with no failed store copy (409)."""

    status_code = 409
    code = "conflict"


@transaction.atomic
def store_copy_retry(*, ref_id: int, actor) -> TemplateStoreRef:
    """'Retry download': a DOWNLOAD_ERROR or ABANDONED copy of an ACTIVE template goes back to
    NOT_DOWNLOADED, and a storage worker is asked for it once this commits. The error moves to
    the event; the attempt count stays. Anything else is a 409 naming the state."""
    from .tasks import store_copy_download_task

    template_id = TemplateStoreRef.objects.values_list("template_id", flat=True).get(pk=ref_id)
    template = lock_template(template_id)  # lock order: template -> copy
    ref = lock_copy(ref_id)
    if not can_proceed(ref.retry_download):
        raise StoreCopyNotRetryable(ref, "only DOWNLOAD_ERROR or ABANDONED copies are retried")
    if ref.store is None:
        raise StoreCopyNotRetryable(ref, "a direct-download row has nothing to download")
    if template.state != TemplateState.ACTIVE:
        raise StoreCopyNotRetryable(ref, f"its template is {template.state}, not ACTIVE")
    if ref.state != StoreRefState.ALLOCATED:
        raise StoreCopyNotRetryable(ref, f"the copy is {ref.state}, not ALLOCATED")
    before, error = ref.download_state, ref.error_text
    ref.retry_download()
    ref.error_text = ""
    ref.download_percent = 0
    ref.downloaded_bytes = 0
    leases.lease_release(ref)
    ref.save()
    record_event(
        ref,
        from_state=before,
        to_state=ref.download_state,
        field="download_state",
        actor=actor,
        actor_label="system",
        reason=f"retry requested; previous error: {error or '(none recorded)'}",
    )
    transaction.on_commit(lambda: store_copy_download_task.delay(ref_id=ref_id))
    return ref


def retryable_store_copies(template_id: int):
    """The copies of a template that "Retry download" would queue again."""
    return TemplateStoreRef.objects.filter(
        template_id=template_id,
        store__isnull=False,
        state=StoreRefState.ALLOCATED,
        download_state__in=[DownloadState.DOWNLOAD_ERROR, DownloadState.ABANDONED],
    ).order_by("pk")


def template_downloads_retry(*, template_id: int, actor) -> list[TemplateStoreRef]:
    """'Retry download' on a template's page: every failed store copy of it is queued again,
    each through `store_copy_retry` (its own lock and re-check). None failed is a 409."""
    ids = list(retryable_store_copies(template_id).values_list("pk", flat=True))
    if not ids:
        template = Template.objects.get(pk=template_id)
        raise NothingToRetry(f"template '{template}' has no failed download to retry")
    return [store_copy_retry(ref_id=ref_id, actor=actor) for ref_id in ids]
