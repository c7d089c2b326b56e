"""Extract (download) a template: CloudStack's extractTemplate / extractIso.

`template_extract` answers a time-limited signed URL (STENCIL_EXTRACT_EXPIRY_SECONDS) that
Stencil itself serves from a READY copy on an image store (`extract_open`, then the streaming
view in templates_app.api.extract_views). A template with no READY store copy yet, e.g. a
direct-download one (its bytes live only at its URL and in pools), first gets a copy on a store
of its zone, filled by the storage worker through the normal store download path; until that
copy is READY the answer is pending (202), and asking again answers the URL.
"""

import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

from django.conf import settings
from django.db import transaction
from django.utils.crypto import salted_hmac

from . import storepaths
from .choices import DownloadState, ImageStoreState, StoreRefState, TemplateState
from .errors import InvalidInput, StencilError, TransitionConflict
from .events import record_event
from .locks import lock_template
from .models import Template, TemplateStoreRef, Zone

URL_CREATED = "DOWNLOAD_URL_CREATED"
COPYING = "COPYING_TO_STORE"
EXTRACT_MODE = "HTTP_DOWNLOAD"
FAILED = (DownloadState.DOWNLOAD_ERROR, DownloadState.ABANDONED, DownloadState.UPLOAD_ERROR)
_SALT = "stencil.templates.extract"


class ExtractRefused(StencilError):
    """A signed extract URL that is expired or does not verify (403, naming the rule)."""

    status_code = 403
    code = "forbidden"


class ExtractGone(StencilError):
    """The copy behind a signed URL is no longer READY (its template was removed)."""

    status_code = 404
    code = "not_found"


@dataclass
class Extract:
    """The answer of an extract: the URL once a copy is READY, else the copy's progress."""

    template: Template
    copy: TemplateStoreRef
    url: str = ""
    expires_at: datetime | None = None

    @property
    def ready(self) -> bool:
        return bool(self.url)

    @property
    def state(self) -> str:
        return URL_CREATED if self.ready else COPYING

    def as_dict(self) -> dict:
        zone = self.copy.store.zone
        return {
            "id": str(self.template.uuid),
            "name": self.template.name,
            "state": self.state,
            "url": self.url or None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "zone": str(zone.uuid),
            "zone_name": zone.name,
            "extract_mode": EXTRACT_MODE,
            "copy": {
                "id": self.copy.pk,
                "state": self.copy.state,
                "download_state": self.copy.download_state,
                "download_percent": 100 if self.ready else self.copy.download_percent,
                "error_text": self.copy.error_text,
            },
        }


def _copies(template_id: int, zone: Zone | None):
    queryset = (
        TemplateStoreRef.objects.filter(template_id=template_id, store__isnull=False)
        .exclude(store__state=ImageStoreState.DISABLED)
        .exclude(state=StoreRefState.READY, install_path="")  # READY with no file: unusable
        .select_related("store__zone", "template")
        .order_by("pk")
    )
    return queryset.filter(store__zone=zone) if zone is not None else queryset


def _ready_copy(template_id: int, zone: Zone | None) -> TemplateStoreRef | None:
    for ref in _copies(template_id, zone).filter(state=StoreRefState.READY):
        if storepaths.absolute(ref.store, ref.install_path).is_file():
            return ref
    return None


def _check_zone(template: Template, zone: Zone | None) -> None:
    if zone is None or template.cross_zones or template.zones.filter(pk=zone.pk).exists():
        return
    raise InvalidInput(f"the template is not in zone '{zone.name}'", field="zone")


def template_extract(
    *, template_id: int, actor, base_url: str, zone: Zone | None = None
) -> Extract:
    """Give the caller (owner or staff: the views check) a signed URL to download the template
    from an image store (in `zone` when given). With no READY copy, a copy still on its way is
    reported; a template that has none (direct download) gets one on a store of its zone, and a
    failed one of a direct-download template is retried: pending until it is READY. Asking again
    is how a client waits; a repeat never queues a second copy."""
    template = Template.objects.get(pk=template_id)
    _check_zone(template, zone)
    ready = _ready_copy(template_id, zone)
    if ready is not None and template.state != TemplateState.REMOVED:
        return signed_extract(ready, base_url=base_url)
    return _extract_pending(template_id, actor=actor, zone=zone)


@transaction.atomic
def _extract_pending(template_id: int, *, actor, zone: Zone | None) -> Extract:
    from .copies import store_copy_retry
    from .services import _enqueue_downloads, stores_for

    template = lock_template(template_id)  # lock order: template -> copy
    if template.state != TemplateState.ACTIVE:
        raise TransitionConflict(template, "extract", reason="it has no READY copy on a store")
    copies = list(
        _copies(template_id, zone).filter(
            state__in=[StoreRefState.ALLOCATED, StoreRefState.CREATING]
        )
    )
    on_its_way = [ref for ref in copies if ref.download_state not in FAILED]
    if on_its_way:
        return Extract(template=template, copy=on_its_way[0])
    if copies and template.direct_download:
        ref = store_copy_retry(ref_id=copies[0].pk, actor=actor)
        return Extract(template=template, copy=_copies(template_id, None).get(pk=ref.pk))
    if copies:
        raise TransitionConflict(
            template,
            "extract",
            reason=f"its store copy failed ({copies[0].error_text or copies[0].download_state})"
            "; an administrator can retry it",
        )
    if not template.direct_download:
        raise TransitionConflict(template, "extract", reason="it has no copy on an image store")
    zones = [z for z in _zones_of(template) if zone is None or z.pk == zone.pk]
    if not zones:
        where = f"zone '{zone.name}' has" if zone is not None else "the template's zones have"
        raise InvalidInput(f"{where} no image store that is up", field="zone")
    [store] = stores_for(zones[:1], is_public=False)
    ref = TemplateStoreRef.objects.create(template=template, store=store)
    record_event(
        template,
        from_state=template.state,
        to_state=template.state,
        actor=actor,
        reason=f"extract: copying the direct-download template into zone '{store.zone}'",
    )
    _enqueue_downloads(template.pk)
    return Extract(template=template, copy=_copies(template_id, None).get(pk=ref.pk))


def _zones_of(template: Template) -> list[Zone]:
    """The template's zones that have an image store up, by name."""
    zones = Zone.objects.all() if template.cross_zones else template.zones.all()
    return list(zones.filter(image_stores__state=ImageStoreState.UP).distinct().order_by("name"))


def extract_of_copy(ref: TemplateStoreRef, *, base_url: str) -> Extract:
    """The extract answer for a copy already chosen (CloudStack's async job): the URL once the
    copy is READY, else its progress."""
    ref = _copies(ref.template_id, None).get(pk=ref.pk)
    if ref.state == StoreRefState.READY:
        return signed_extract(ref, base_url=base_url)
    return Extract(template=ref.template, copy=ref)


# Signed URLs --------------------------------------------------------------------------------


def _signature(template_uuid: str, ref_id: int, expires: int) -> str:
    message = f"{template_uuid}:{ref_id}:{expires}"
    return salted_hmac(_SALT, message, algorithm="sha256").hexdigest()


def file_name(ref: TemplateStoreRef) -> str:
    return Path(ref.install_path).name


def signed_extract(ref: TemplateStoreRef, *, base_url: str) -> Extract:
    """A URL to GET the copy's bytes, valid STENCIL_EXTRACT_EXPIRY_SECONDS from now."""
    expires = int(time.time()) + settings.STENCIL_EXTRACT_EXPIRY_SECONDS
    template_uuid = str(ref.template.uuid)
    query = urlencode({"expires": expires, "signature": _signature(template_uuid, ref.pk, expires)})
    path = f"api/v1/extracts/{template_uuid}/{ref.pk}/{file_name(ref)}"
    return Extract(
        template=ref.template,
        copy=ref,
        url=f"{base_url.rstrip('/')}/{path}?{query}",
        expires_at=datetime.fromtimestamp(expires, tz=UTC),
    )


def extract_open(
    *, template_uuid: str, ref_id: int, expires: str, signature: str
) -> tuple[TemplateStoreRef, Path]:
    """Check a signed extract URL and find the file it names. A signature that does not verify
    or an expiry that passed is a 403 (the signature first: an expired forgery says nothing
    about the copy); a copy no longer READY is a 404."""
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        raise ExtractRefused("the extract URL has no valid 'expires'") from None
    expected = _signature(str(template_uuid), ref_id, expires_at)
    if not hmac.compare_digest(expected, signature or ""):
        raise ExtractRefused("the extract URL's signature does not verify")
    if expires_at < time.time():
        raise ExtractRefused("the extract URL has expired; ask for a new one")
    ref = (
        TemplateStoreRef.objects.select_related("store", "template")
        .filter(pk=ref_id, template__uuid=template_uuid, state=StoreRefState.READY)
        .exclude(template__state=TemplateState.REMOVED)
        .first()
    )
    if ref is None or ref.store is None or not ref.install_path:
        raise ExtractGone("the template's copy is no longer on the image store")
    path = storepaths.absolute(ref.store, ref.install_path)
    if not path.is_file():
        raise ExtractGone("the template's copy is no longer on the image store")
    return ref, path
