"""Signed uploads (CloudStack's getUploadParamsForTemplate) and their expiry.

`template_upload_params` persists the template, charges the account and returns a URL with
metadata signed (HMAC-SHA256) with a pre-shared key and an expiry. `template_upload_receive`
checks signature and expiry, streams the body into the store under the unique name, verifies
checksum and image, and ends UPLOADED/READY. Expired uploads are abandoned and uncharged.
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import random
import time
import uuid as uuid_lib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone
from django_fsm import can_proceed

from . import leases, storepaths
from .choices import DownloadState, ImageStoreState, TemplateKind, TemplateState
from .errors import InvalidInput, StencilError
from .events import record_copy_event
from .images.checksums import normalize_checksum, split_checksum
from .images.inspection import ImageRejected, inspect_image
from .locks import lock_copy, lock_template
from .models import Account, Template, TemplateStoreRef, Zone
from .services import _validate_kind_and_format, template_create, template_deactivate
from .signals import send_store_copy_ready_on_commit

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
# An upload renews its lease while the body streams; a web worker that died stops renewing.
UPLOAD_LEASE = timedelta(seconds=120)


class UploadForbidden(StencilError):
    """Bad or expired signature."""

    status_code = 403
    code = "forbidden"


class UploadConflict(StencilError):
    """Already uploaded, or an upload is under way."""

    status_code = 409
    code = "conflict"


class UploadTooLarge(StencilError):
    """The body is longer than the size it was signed for, or than the account may store."""

    status_code = 413
    code = "too_large"


class UploadLeaseLost(UploadConflict):
    """This upload's lease ran out and another upload took the copy over."""


@dataclass
class UploadParams:
    id: str
    post_url: str
    metadata: str
    expires: str
    signature: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _key() -> bytes:
    return settings.STENCIL_UPLOAD_SIGNING_KEY.encode()


def sign(metadata: str, post_url: str, expires: str) -> str:
    message = "\n".join([metadata, post_url, expires]).encode()
    return hmac.new(_key(), message, hashlib.sha256).hexdigest()


def _encode(payload: dict) -> str:
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode(metadata: str) -> dict:
    try:
        return json.loads(base64.urlsafe_b64decode(metadata.encode()))
    except (ValueError, TypeError) as exc:
        raise UploadForbidden("metadata is not valid") from exc


@transaction.atomic
def template_upload_params(
    *,
    account: Account,
    actor,
    name: str,
    image_format: str,
    zone: Zone,
    base_url: str,
    os_type: str = "",
    checksum: str = "",
    size: int = 0,
    kind: str = TemplateKind.TEMPLATE,
    display_text: str = "",
    is_public: bool = False,
) -> UploadParams:
    """Persist the template and its NOT_UPLOADED copy, charge the account, sign the URL."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("a name is required", field="name")
    _validate_kind_and_format(kind, image_format)
    checksum = normalize_checksum(checksum)
    copy = upload_copy(zone, size=size)
    template = template_create(
        account_id=account.pk,
        actor=actor,
        name=name,
        zones=[zone],
        copies=[copy],
        secondary_bytes=size,
        reason="upload requested",
        display_text=display_text,
        kind=kind,
        format=image_format,
        checksum=checksum,
        os_type=os_type,
        is_public=is_public,
    )
    return signed_upload_params(template, base_url=base_url)


def upload_copy(zone: Zone, *, size: int) -> TemplateStoreRef:
    """The unsaved NOT_UPLOADED copy of a template to upload: a random Up store of `zone`,
    the upload URL's expiry, and the bytes charged until the real size is known."""
    if size < 0:
        raise InvalidInput("size must be a number of bytes, 0 or more", field="size")
    stores = list(zone.image_stores.filter(state=ImageStoreState.UP))
    if not stores:
        raise InvalidInput(f"zone '{zone.name}' has no image store that is up", field="zone")
    expires_at = timezone.now() + timedelta(seconds=settings.STENCIL_UPLOAD_EXPIRY_SECONDS)
    return TemplateStoreRef(
        store=random.choice(stores),
        download_state=DownloadState.NOT_UPLOADED,
        upload_expires_at=expires_at,
        charged_bytes=size,
    )


def signed_upload_params(template: Template, *, base_url: str) -> UploadParams:
    """The signed URL (and its metadata) to POST the bytes of `template`'s one upload copy to."""
    ref = template.store_refs.get()
    post_url = f"{base_url.rstrip('/')}/api/v1/uploads/{template.uuid}/"
    metadata = _encode(
        {
            "template": str(template.uuid),
            "copy": ref.pk,
            "size": ref.charged_bytes,
            "unique_name": template.unique_name,
            "format": template.format,
            "checksum": template.checksum,
        }
    )
    expires = ref.upload_expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return UploadParams(
        id=str(template.uuid),
        post_url=post_url,
        metadata=metadata,
        expires=expires,
        signature=sign(metadata, post_url, expires),
    )


def verify_signature(
    *, template_uuid: str, post_url: str, metadata: str, expires: str, signature: str
) -> dict:
    """403 unless the signature matches (constant time) and the expiry is in the future."""
    expected = sign(metadata, post_url, expires)
    if not hmac.compare_digest(expected, signature or ""):
        raise UploadForbidden("upload signature does not match")
    try:
        deadline = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise UploadForbidden("expires is not a UTC timestamp") from exc
    if deadline <= timezone.now():
        raise UploadForbidden("upload URL has expired")
    payload = _decode(metadata)
    if payload.get("template") != str(template_uuid):
        raise UploadForbidden("metadata is for another template")
    return payload


@transaction.atomic
def _claim_upload(ref_id: int, owner: str) -> TemplateStoreRef:
    """Take the copy for this upload under a lease (renewed while the body streams); an upload
    whose web worker died is taken over once its lease has run out."""
    template_id = TemplateStoreRef.objects.values_list("template_id", flat=True).get(pk=ref_id)
    template = lock_template(template_id)
    ref = lock_copy(ref_id)
    if ref.download_state == DownloadState.UPLOADED:
        raise UploadConflict("this template was already uploaded")
    if ref.download_state == DownloadState.UPLOAD_ABANDONED or template.state != "ACTIVE":
        raise UploadConflict("this upload was abandoned")
    if not can_proceed(ref.start_upload):
        raise UploadConflict("an upload of this template is under way")
    ref.step("start_upload")
    leases.lease_claim(ref, owner, UPLOAD_LEASE)
    ref.install_path = storepaths.relative_install_path(template)
    ref.attempts += 1
    ref.error_text = ""
    ref.save()
    return ref


def _lease_renewer(ref_id: int, owner: str, progress: Callable[[int], None] | None):
    """Renew the upload's lease (and record the bytes received) at most once a second."""
    last = [0.0]

    def received(size: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1:
            last[0] = now
            if not leases.lease_renew(
                TemplateStoreRef, ref_id, owner, UPLOAD_LEASE, downloaded_bytes=size
            ):
                raise UploadLeaseLost("another upload took this one over")
        if progress:
            progress(size)

    return received


def _stream(
    body: BinaryIO,
    dest: Path,
    *,
    algorithm: str,
    progress: Callable[[int], None] | None,
    limit: tuple[int, str] | None = None,
) -> tuple[int, str, str]:
    """Write the body to dest in 1 MiB chunks, hashing as we go; never holds it in memory.
    `limit` (bytes, why): the first byte past it stops the upload (UploadTooLarge)."""
    declared = hashlib.new(algorithm)
    sha256 = declared if algorithm == "sha256" else hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        while chunk := body.read(CHUNK):
            if limit is not None and size + len(chunk) > limit[0]:
                raise UploadTooLarge(
                    f"the upload is longer than {limit[0]} bytes ({limit[1]})", field="file"
                )
            out.write(chunk)
            declared.update(chunk)
            if sha256 is not declared:
                sha256.update(chunk)
            size += len(chunk)
            if progress:
                progress(size)
        out.flush()
        os.fsync(out.fileno())
    return size, declared.hexdigest(), sha256.hexdigest()


@transaction.atomic
def _finish_upload(
    ref_id: int, owner: str, *, size: int, sha256: str, virtual_size: int
) -> TemplateStoreRef:
    ref = lock_copy(ref_id)
    if ref.lease_owner != owner or ref.download_state != DownloadState.UPLOAD_IN_PROGRESS:
        raise UploadLeaseLost("another upload took this one over")
    ref.step("finish_upload")
    leases.lease_release(ref)
    Account.objects.filter(pk=ref.template.account_id).update(
        used_secondary_bytes=Greatest(F("used_secondary_bytes") - ref.charged_bytes + size, 0)
    )
    ref.charged_bytes = size
    ref.physical_size = ref.downloaded_bytes = size
    ref.size = virtual_size
    ref.sha256 = sha256
    ref.download_percent = 100
    ref.save()
    record_copy_event(
        ref, before=DownloadState.UPLOAD_IN_PROGRESS, actor_label="upload", reason="verified"
    )
    send_store_copy_ready_on_commit(template_id=ref.template_id, ref_id=ref.pk)
    return ref


@transaction.atomic
def _fail_upload(ref_id: int, owner: str, reason: str) -> None:
    ref = lock_copy(ref_id)
    if ref.lease_owner != owner or ref.download_state != DownloadState.UPLOAD_IN_PROGRESS:
        return
    ref.step("fail_upload")
    leases.lease_release(ref)
    ref.error_text = reason[:4000]
    ref.save()
    record_copy_event(
        ref, before=DownloadState.UPLOAD_IN_PROGRESS, actor_label="upload", reason=reason
    )


QUOTA_NAME = "the account's max_secondary_bytes"


def _secondary_room_of(ref: TemplateStoreRef) -> int | None:
    """What the account may still store, this copy's own charge included (None: no limit)."""
    account = Account.objects.get(pk=ref.template.account_id)
    if account.max_secondary_bytes is None:
        return None
    return max(account.max_secondary_bytes - account.used_secondary_bytes + ref.charged_bytes, 0)


def _upload_limit(ref: TemplateStoreRef, *, signed_size: int) -> tuple[int, str] | None:
    """The most bytes this upload may write: the size it was signed for (0: not given), and
    what the account may still store (its copy's charge included)."""
    limits = []
    if signed_size > 0:
        limits.append((signed_size, "the size the upload URL was signed for"))
    room = _secondary_room_of(ref)
    if room is not None:
        limits.append((room, QUOTA_NAME))
    return min(limits) if limits else None


def template_upload_receive(
    *,
    template_uuid: str,
    post_url: str,
    metadata: str,
    expires: str,
    signature: str,
    body: BinaryIO,
    progress: Callable[[int], None] | None = None,
) -> TemplateStoreRef:
    """The upload endpoint's work: verify, stream, check, inspect, READY. Errors leave no file."""
    payload = verify_signature(
        template_uuid=template_uuid,
        post_url=post_url,
        metadata=metadata,
        expires=expires,
        signature=signature,
    )
    owner = leases.new_owner()
    ref = _claim_upload(int(payload["copy"]), owner)
    template = ref.template
    image = storepaths.absolute(ref.store, ref.install_path)
    image.parent.mkdir(parents=True, exist_ok=True)
    temp = image.with_name(f".{image.name}.upload-{uuid_lib.uuid4().hex[:8]}")
    try:
        algorithm, expected = (
            split_checksum(template.checksum) if template.checksum else ("sha256", "")
        )
        size, digest, sha256 = _stream(
            body,
            temp,
            algorithm=algorithm,
            progress=_lease_renewer(ref.pk, owner, progress),
            limit=_upload_limit(ref, signed_size=int(payload.get("size") or 0)),
        )
        if expected and not hmac.compare_digest(digest, expected):
            algorithm_label = template.checksum.partition("}")[0] + "}"
            raise ImageRejected(
                f"checksum mismatch: expected {template.checksum}, got {algorithm_label}{digest}"
            )
        info = inspect_image(
            temp, template.format, room=_secondary_room_of(ref), room_name=QUOTA_NAME
        )
        temp.replace(image)
        storepaths.write_properties(
            image.parent,
            {
                "uniquename": template.unique_name,
                "filename": image.name,
                "id": template.pk,
                "uuid": template.uuid,
                "format": template.format,
                "checksum": template.checksum,
                "sha256": sha256,
                "size": info.virtual_size,
                "virtualsize": info.virtual_size,
                "physicalsize": size,
            },
        )
    except UploadLeaseLost:
        temp.unlink(missing_ok=True)  # only our own temp file: the new owner writes its own
        raise
    except UploadTooLarge as exc:
        temp.unlink(missing_ok=True)
        _fail_upload(ref.pk, owner, exc.message)
        raise
    except (ImageRejected, OSError) as exc:
        for path in (temp, image, image.parent / storepaths.PROPERTIES_NAME):
            path.unlink(missing_ok=True)
        reason = exc.reason if isinstance(exc, ImageRejected) else f"upload failed: {exc}"
        _fail_upload(ref.pk, owner, reason)
        raise InvalidInput(reason, field="file") from exc
    return _finish_upload(ref.pk, owner, size=size, sha256=sha256, virtual_size=info.virtual_size)


def abandon_expired_uploads(*, now: datetime | None = None) -> int:
    """Sweep: uploads past their expiry become UPLOAD_ABANDONED, their charge released and
    their template deactivated (the GC sweep then removes it)."""
    now = now or timezone.now()
    expired = TemplateStoreRef.objects.filter(
        upload_expires_at__lte=now,
        download_state__in=[DownloadState.NOT_UPLOADED, DownloadState.UPLOAD_ERROR],
    ).values_list("pk", "template_id")
    count = 0
    for ref_id, template_id in expired:
        if _abandon(ref_id, template_id):
            template_deactivate(template_id=template_id, actor=None, reason="upload abandoned")
            count += 1
    return count


@transaction.atomic
def _abandon(ref_id: int, template_id: int) -> bool:
    lock_template(template_id)
    ref = lock_copy(ref_id)
    if ref.download_state not in (DownloadState.NOT_UPLOADED, DownloadState.UPLOAD_ERROR):
        return False
    before = ref.download_state
    ref.abandon_upload()
    Account.objects.filter(pk=ref.template.account_id).update(
        used_secondary_bytes=Greatest(F("used_secondary_bytes") - ref.charged_bytes, 0)
    )
    ref.charged_bytes = 0
    ref.save()
    record_copy_event(ref, before=before, actor_label="upload-expiry", reason="upload URL expired")
    return ref.template.state == TemplateState.ACTIVE
