"""Every state change of the catalogue: registration, edits, the life cycle and the GC sweep."""

import contextlib
import logging
import random
import uuid as uuid_lib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BigIntegerField, Case, CharField, F, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce, Concat, Greatest
from django.utils import timezone
from django.utils.text import slugify
from django_fsm import can_proceed

from .choices import (
    DownloadState,
    Hypervisor,
    ImageStoreState,
    StoreRefState,
    TemplateFormat,
    TemplateKind,
    TemplateState,
)
from .errors import InvalidInput, LimitExceeded, TransitionConflict
from .events import build_event, record_event, record_events, record_events_from
from .fsm import bulk_transition
from .images.checksums import normalize_checksum
from .images.headers import header_pairs, validate_header_details
from .images.inspection import ImageRejected, check_virtual_size
from .images.metalink import fetch_metalink, scheme_of
from .images.urlsafety import HostNotResolved, validate_url
from .locks import lock_account, lock_template, lock_templates
from .models import Account, ImageStore, Template, TemplateDetail, TemplateStoreRef, Zone
from .references import has_live_reference, reference_counts
from .signals import template_removed, templates_deactivated
from .url_checks import check_direct_download_url

logger = logging.getLogger(__name__)

GC_ADVISORY_LOCK_KEY = 0x5E_7C_11  # any constant shared by every sweeper
HELD_LIST_LIMIT = 1000


# Registration -----------------------------------------------------------------------------


def _validate_url(url: str) -> str:
    """The outbound URL rules (scheme, credentials, port, denied networks) at registration.

    A name that does not resolve from here is accepted: the download resolves and checks it
    again from the worker that fetches it.
    """
    url = (url or "").strip()
    if not url:
        raise InvalidInput("a URL is required to register a template", field="url")
    with contextlib.suppress(HostNotResolved):
        validate_url(url)
    return url


def _validate_kind_and_format(kind: str, image_format: str) -> None:
    if image_format not in TemplateFormat.values:
        raise InvalidInput(
            f"unknown format '{image_format}' (one of: {', '.join(TemplateFormat.values)})",
            field="format",
        )
    if kind == TemplateKind.ISO and image_format != TemplateFormat.ISO:
        raise InvalidInput("an ISO must have format ISO", field="format")
    if kind == TemplateKind.TEMPLATE and image_format == TemplateFormat.ISO:
        raise InvalidInput("format ISO is only for kind ISO", field="format")


def _unique_name_for(name: str, template_uuid: uuid_lib.UUID) -> str:
    """Stable file-system name: never changes when the template is renamed."""
    stem = slugify(name)[:40] or "template"
    return f"{stem}-{template_uuid.hex[:16]}"


def charge_account(account: Account, *, templates: int = 1, secondary_bytes: int = 0) -> None:
    """Check the account's limits and add to its usage; call with the account row locked."""
    if account.max_templates is not None and account.used_templates + templates > (
        account.max_templates
    ):
        raise LimitExceeded(
            f"account '{account}' already has {account.used_templates} of "
            f"{account.max_templates} templates allowed",
            field="max_templates",
        )
    limit = account.max_secondary_bytes
    if limit is not None and account.used_secondary_bytes + secondary_bytes > limit:
        raise LimitExceeded(
            f"account '{account}' uses {account.used_secondary_bytes} of {limit} secondary "
            f"storage bytes; {secondary_bytes} more would exceed it",
            field="max_secondary_bytes",
        )
    Account.objects.filter(pk=account.pk).update(
        used_templates=F("used_templates") + templates,
        used_secondary_bytes=F("used_secondary_bytes") + secondary_bytes,
    )


def create_template_row(
    *, account: Account, name: str, display_text: str = "", **fields
) -> Template:
    """A new Template with its public uuid and stable unique name (used for file paths)."""
    template_uuid = uuid_lib.uuid4()
    return Template.objects.create(
        uuid=template_uuid,
        unique_name=_unique_name_for(name, template_uuid),
        name=name,
        display_text=display_text or name,
        account=account,
        **fields,
    )


def _release_template_charge(account_id: int, count: int = 1) -> None:
    Account.objects.filter(pk=account_id, used_templates__gt=0).update(
        used_templates=Greatest(F("used_templates") - count, Value(0))
    )


def stores_for(zones: Iterable[Zone], *, is_public: bool) -> list[ImageStore]:
    """A public template goes to every store of a zone; a private one to one random store."""
    chosen: list[ImageStore] = []
    for zone in zones:
        stores = list(zone.image_stores.filter(state=ImageStoreState.UP).order_by("pk"))
        if not stores:
            raise InvalidInput(f"zone '{zone.name}' has no image store that is up", field="zones")
        chosen.extend(stores if is_public else [random.choice(stores)])
    return chosen


def _normalize_details(details: Any) -> list[tuple[str, str]]:
    if not details:
        return []
    if isinstance(details, dict):
        pairs = list(details.items())
    else:
        try:
            pairs = [(item["key"], item.get("value", "")) for item in details]
        except (TypeError, KeyError, AttributeError) as exc:
            raise InvalidInput(
                "details must be an object of key: value or a list of {key, value}",
                field="details",
            ) from exc
    result = []
    for key, value in pairs:
        key, value = str(key).strip(), "" if value is None else str(value)
        if not key or len(key) > 255:
            raise InvalidInput("detail keys must be 1 to 255 characters", field="details")
        if len(value) > 4096:
            raise InvalidInput(f"detail '{key}' is longer than 4096 characters", field="details")
        result.append((key, value))
    return result


@dataclass
class RegistrationPlan:
    """A registration that passed every check, ready to be written (`template_create_planned`).

    Built outside any transaction: the host's URL check is a network round trip."""

    name: str
    zones: list[Zone]
    stores: list[ImageStore]
    detail_pairs: list[tuple[str, str]]
    fields: dict[str, Any]
    checked: dict = field(default_factory=dict)


def template_registration_plan(
    *,
    name: str,
    image_format: str,
    url: str,
    zones: list[Zone] | None = None,
    cross_zones: bool = False,
    kind: str = TemplateKind.TEMPLATE,
    display_text: str = "",
    checksum: str = "",
    os_type: str = "",
    hypervisor: str = "KVM",
    is_public: bool = False,
    is_featured: bool = False,
    direct_download: bool = False,
    primary_policy: str = "CACHE",
    details: Any = None,
    verify: bool = False,
) -> RegistrationPlan:
    """Validate a registration by URL and, for direct download, have a random Up host of the
    zone check the URL (with `verify`: stream, hash and inspect the whole image). Writes
    nothing and holds no lock: call it before opening the registration's transaction."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("a name is required", field="name")
    _validate_kind_and_format(kind, image_format)
    if hypervisor not in Hypervisor.values:
        raise InvalidInput(
            f"unknown hypervisor '{hypervisor}' (one of: {', '.join(Hypervisor.values)})",
            field="hypervisor",
        )
    url = _validate_url(url)
    checksum = normalize_checksum(checksum)
    detail_pairs = _normalize_details(details)
    if not cross_zones and not zones:
        raise InvalidInput("give at least one zone, or cross_zones=true", field="zones")
    target_zones = list(Zone.objects.all()) if cross_zones else list(zones or [])
    stores = [] if direct_download else stores_for(target_zones, is_public=is_public)
    validate_header_details(detail_pairs)
    if scheme_of(url) == "metalink":
        checksum = _metalink_checksum(
            url, checksum, direct_download=direct_download, headers=dict(header_pairs(detail_pairs))
        )
    checked = {}
    if direct_download:
        checked = _check_direct_download(
            url=url,
            checksum=checksum,
            image_format=image_format,
            zones=target_zones,
            headers=dict(header_pairs(detail_pairs)),
            verify=verify,
        )
        _check_probed_virtual_size(checked)
    return RegistrationPlan(
        name=name,
        zones=target_zones,
        stores=stores,
        detail_pairs=detail_pairs,
        checked=checked,
        fields={
            "display_text": display_text,
            "kind": kind,
            "format": image_format,
            "url": url,
            "checksum": checksum,
            "os_type": os_type,
            "hypervisor": hypervisor,
            "is_public": is_public,
            "is_featured": is_featured,
            "cross_zones": cross_zones,
            "direct_download": direct_download,
            "primary_policy": primary_policy,
        },
    )


def template_create(
    *,
    account_id: int,
    actor,
    name: str,
    zones: list[Zone],
    copies: list[TemplateStoreRef],
    detail_pairs: Iterable[tuple[str, str]] = (),
    secondary_bytes: int = 0,
    reason: str = "registered",
    **fields: Any,
) -> Template:
    """The one way a template row is born (registration, upload, version): lock and charge the
    account, create the row with its uuid and unique name, its zones, details and copies
    (unsaved `TemplateStoreRef`s, given their template here), and record the event. Call it
    inside a transaction; downloads are the caller's to enqueue."""
    account = lock_account(account_id)
    charge_account(account, secondary_bytes=secondary_bytes)
    template = create_template_row(account=account, name=name, **fields)
    if not fields.get("cross_zones"):
        template.zones.set(zones)
    TemplateDetail.objects.bulk_create(
        [TemplateDetail(template=template, key=k, value=v) for k, v in detail_pairs]
    )
    for copy in copies:
        copy.template = template
    TemplateStoreRef.objects.bulk_create(copies)
    record_event(template, from_state="", to_state=template.state, actor=actor, reason=reason)
    return template


def template_create_planned(
    plan: RegistrationPlan, *, account_id: int, actor, reason: str = "registered", **extra: Any
) -> Template:
    """Write a planned registration (inside the caller's transaction); `extra` are more row
    fields (a version's base and number)."""
    if plan.fields["direct_download"]:
        verified = plan.checked.get("verified") or {}
        first = _first_check(plan.checked)
        copies = [
            TemplateStoreRef(
                store=None,
                download_state=DownloadState.BYPASSED,
                state=StoreRefState.READY,
                sha256=verified.get("sha256", ""),
                size=verified.get("virtual_size") or first.get("virtual_size"),
                physical_size=verified.get("size") or first.get("size"),
            )
        ]
    else:
        copies = [TemplateStoreRef(store=store) for store in plan.stores]
    template = template_create(
        account_id=account_id,
        actor=actor,
        name=plan.name,
        zones=plan.zones,
        copies=copies,
        detail_pairs=plan.detail_pairs,
        reason=reason,
        **plan.fields,
        **extra,
    )
    if not plan.fields["direct_download"]:
        _enqueue_downloads(template.pk)
    return template


def refuse_featuring_by_non_staff(actor, is_featured: bool) -> None:
    """Only administrators feature a template (a management command's actor may be None)."""
    if is_featured and actor is not None and not getattr(actor, "is_staff", False):
        raise InvalidInput("only administrators may feature a template", field="is_featured")


def template_register(*, account: Account, actor, **params: Any) -> Template:
    """Register a template by URL (`template_registration_plan`'s parameters): check it first,
    outside any transaction, then write the row, its copies and the charge in one transaction,
    so a refused registration leaves nothing behind. A direct-download template gets one
    BYPASSED/READY row and no secondary copy."""
    refuse_featuring_by_non_staff(actor, params.get("is_featured", False))
    plan = template_registration_plan(**params)
    with transaction.atomic():
        return template_create_planned(plan, account_id=account.pk, actor=actor)


def _metalink_checksum(
    url: str, checksum: str, *, direct_download: bool, headers: dict[str, str]
) -> str:
    """A metalink is fetched and parsed at registration (400 naming `url` when it cannot be),
    and its strongest hash becomes the template's checksum when the template gives none, so
    every download is checked against what was registered. No hash at all is refused."""
    if not direct_download:
        raise InvalidInput(
            "a metalink URL needs direct_download=true: image stores download plain http/https",
            field="url",
        )
    _mirrors, metalink_hash = fetch_metalink(
        url,
        scratch_dir=Path(settings.DATA_DIR) / "tmp",
        headers=headers,
        backoff_base=settings.STENCIL_DOWNLOAD_BACKOFF_BASE,
    )
    if not checksum and not metalink_hash:
        raise InvalidInput(
            "the metalink lists no file hash (sha-256, sha-512, sha-1 or md5) and the template "
            "has no checksum: give one ({ALGO}hex)",
            field="checksum",
        )
    return checksum or metalink_hash


def _check_probed_virtual_size(checked: dict) -> None:
    """A virtual size the host's URL check read from the image's header must be within
    STENCIL_MAX_VIRTUAL_SIZE (inspection checks it again on the bytes)."""
    probed = [check.get("virtual_size") or 0 for check in checked.get("checks") or []]
    verified = (checked.get("verified") or {}).get("virtual_size") or 0
    try:
        check_virtual_size(max([verified, *probed]))
    except ImageRejected as exc:
        raise InvalidInput(exc.reason, field="url") from None


def _first_check(checked: dict) -> dict:
    checks = checked.get("checks") or [{}]
    return checks[0]


def _check_direct_download(
    *,
    url: str,
    checksum: str,
    image_format: str,
    zones: list[Zone],
    headers: dict[str, str],
    verify: bool,
) -> dict:
    """Seed 003: a checksum is required (a metalink's hash was made the checksum already), and
    a random Up host of the zone must reach the URL before registration succeeds (the compute
    layer registers who asks the host: templates_app.url_checks)."""
    if not checksum:
        raise InvalidInput(
            "a checksum ({ALGO}hex) is required for direct download, unless the URL is a "
            "metalink that lists hashes",
            field="checksum",
        )
    if not settings.STENCIL_DIRECT_DOWNLOAD_URL_CHECK:
        return {}
    return check_direct_download_url(
        zone=zones[0],
        url=url,
        headers=headers,
        verify=verify,
        checksum=checksum,
        image_format=image_format,
    )


EDITABLE_FIELDS = ("name", "display_text", "os_type", "is_public", "is_featured", "version_name")
STAFF_ONLY_FIELDS = ("is_featured",)
VERSION_NAME_MAX_LENGTH = 128


@transaction.atomic
def template_update(*, template_id: int, actor, changes: dict[str, Any]) -> Template:
    """Edit what users may edit; `is_featured` is for staff only; a REMOVED template is frozen.

    Of the versioning fields only `version_name` is editable: the base and the number are not.
    """
    template = lock_template(template_id)
    unknown = sorted(set(changes) - set(EDITABLE_FIELDS))
    if unknown:
        raise InvalidInput(
            f"field cannot be changed (editable: {', '.join(EDITABLE_FIELDS)})", field=unknown[0]
        )
    for name in STAFF_ONLY_FIELDS:
        if name in changes and not getattr(actor, "is_staff", False):
            raise InvalidInput("only administrators may change this", field=name)
    if template.state == TemplateState.REMOVED:
        raise TransitionConflict(template, "edit")
    if "name" in changes and not str(changes["name"]).strip():
        raise InvalidInput("the name cannot be blank", field="name")
    if len(changes.get("version_name") or "") > VERSION_NAME_MAX_LENGTH:
        raise InvalidInput(
            f"no more than {VERSION_NAME_MAX_LENGTH} characters", field="version_name"
        )
    for name, value in changes.items():
        setattr(template, name, value)
    template.save(update_fields=[*changes, "updated_at"])
    return template


@transaction.atomic
def template_zones_add(*, template_id: int, zones: list[Zone], actor) -> list[TemplateStoreRef]:
    """Copy a template to more zones (POST /templates/{id}/copy/, CloudStack's copyTemplate,
    the admin's "Copy to zones"): an ACTIVE template gains `zones`. Each new zone gets copies
    on its stores (the same store rule as a registration) that the storage workers fill after
    commit, store to store from a READY copy when one exists anywhere (no re-download), else
    from the template's URL (templates_app.copies); a direct-download template only gains the
    zones (its hosts fetch the URL themselves). Bytes are charged as they land."""
    template = lock_template(template_id)
    if template.state != TemplateState.ACTIVE:
        raise TransitionConflict(template, "copy")
    if template.cross_zones:
        raise InvalidInput("the template is already in every zone", field="zones")
    ready = TemplateStoreRef.objects.filter(
        template=template, state=StoreRefState.READY, store__isnull=False
    )
    if not template.url and not ready.exists():
        raise InvalidInput(
            "the template has no URL and no READY copy on any store to copy it from",
            field="zones",
        )
    present = set(template.zones.values_list("pk", flat=True))
    new_zones = [zone for zone in zones if zone.pk not in present]
    if not new_zones:
        raise InvalidInput("the template is already in each of these zones", field="zones")
    stores = [] if template.direct_download else stores_for(new_zones, is_public=template.is_public)
    copies = TemplateStoreRef.objects.bulk_create(
        [TemplateStoreRef(template=template, store=store) for store in stores]
    )
    template.zones.add(*new_zones)
    names = ", ".join(zone.name for zone in new_zones)
    record_event(
        template,
        from_state=template.state,
        to_state=template.state,
        actor=actor,
        reason=f"copied to zone(s) {names}",
    )
    _enqueue_downloads(template.pk)
    return copies


CANCELLED_BY_DELETE = "cancelled: the template was deleted"


def _enqueue_downloads(template_id: int, *, cancelled_too: bool = False) -> None:
    """After commit, one storage-worker task per copy still to download (with `cancelled_too`,
    also the copies a delete cancelled)."""
    from .tasks import store_copy_download_task

    wanted = Q(download_state=DownloadState.NOT_DOWNLOADED)
    if cancelled_too:
        wanted |= Q(download_state=DownloadState.DOWNLOAD_ERROR, error_text=CANCELLED_BY_DELETE)

    def send() -> None:
        pending = TemplateStoreRef.objects.filter(
            wanted, template_id=template_id, store__isnull=False
        ).values_list("pk", flat=True)
        for ref_id in pending:
            store_copy_download_task.delay(ref_id=ref_id)

    transaction.on_commit(send)


# Life cycle -------------------------------------------------------------------------------


def _enqueue_sweep_of(template_ids: list[int]) -> None:
    from .tasks import gc_sweep_task

    transaction.on_commit(lambda: gc_sweep_task.delay(template_ids=template_ids))


def _lock_active_versions(base: Template) -> list[Template]:
    """The ACTIVE versions of a locked base, locked in id order (a new statement after the
    base's lock, so it sees every version committed before we got it)."""
    ids = list(base.versions.filter(state=TemplateState.ACTIVE).values_list("pk", flat=True))
    return [version for version in lock_templates(ids) if version.state == TemplateState.ACTIVE]


@transaction.atomic
def template_deactivate(*, template_id: int, actor, reason: str = "deleted") -> Template:
    """The delete API: ACTIVE -> INACTIVE at once, whatever uses it; the sweep removes later,
    once nothing references it and STENCIL_GC_GRACE_SECONDS have passed (`deactivated_at`).

    Deleting a base template deletes its ACTIVE versions with it (seed 002); each then follows
    the same life cycle. Locks: the template, its versions (id order), then the account's row.
    """
    template = lock_template(template_id)
    if template.state != TemplateState.INACTIVE and not can_proceed(template.deactivate):
        raise TransitionConflict(template, "delete")
    targets = [template] if template.state == TemplateState.ACTIVE else []
    versions = _lock_active_versions(template) if template.base_id is None else []
    targets += versions
    if not targets:
        return template
    now = timezone.now()
    for target in targets:
        target.deactivate()
        target.deactivated_at = now
        target.save(update_fields=["state", "deactivated_at", "updated_at"])
    _release_template_charge(template.account_id, count=len(targets))
    _cancel_downloads([target.pk for target in targets])
    deactivated = [target.pk for target in targets]
    transaction.on_commit(
        lambda: templates_deactivated.send(sender="template", template_ids=deactivated)
    )
    record_events(
        build_event(
            target,
            from_state=TemplateState.ACTIVE,
            to_state=target.state,
            actor=actor,
            reason=reason if target is template else f"base template '{template}' deleted",
        )
        for target in targets
    )
    # Templates nobody uses can go at once instead of waiting for the periodic sweep, unless
    # a grace keeps them (the periodic sweep removes them once it is over).
    if grace_period().total_seconds() > 0:
        return template
    unused = list(
        past_grace(Template.objects.filter(pk__in=[target.pk for target in targets]))
        .exclude(has_live_reference())
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if unused:
        _enqueue_sweep_of(unused)
    return template


def _cancel_downloads(template_ids: list[int]) -> int:
    """Stop the store downloads of deleted templates: their workers lose the lease, abort at
    their next progress write and delete their temporary files (templates_app.copies)."""
    running = list(
        TemplateStoreRef.objects.filter(
            template_id__in=template_ids, download_state=DownloadState.DOWNLOAD_IN_PROGRESS
        ).values_list("pk", flat=True)
    )
    if not running:
        return 0
    now = timezone.now()
    rows = TemplateStoreRef.objects.filter(pk__in=running)
    bulk_transition(
        rows,
        TemplateStoreRef.fail_download,
        lease_owner="",
        lease_expires_at=None,
        error_text=CANCELLED_BY_DELETE,
        updated_at=now,
    )
    bulk_transition(rows, TemplateStoreRef.release)
    record_events(
        build_event(
            ref,
            from_state=DownloadState.DOWNLOAD_IN_PROGRESS,
            to_state=DownloadState.DOWNLOAD_ERROR,
            actor_label="delete",
            reason=CANCELLED_BY_DELETE,
            field="download_state",
        )
        for ref in TemplateStoreRef.objects.filter(pk__in=running).select_related("template")
    )
    return len(running)


@transaction.atomic
def template_reactivate(*, template_id: int, actor, reason: str = "reactivated") -> Template:
    """Staff undo of a delete, possible until the sweep has removed the bytes.

    A version comes back only while its base template is ACTIVE (the base's lock first).
    """
    base_id = Template.objects.values_list("base_id", flat=True).get(pk=template_id)
    base = lock_template(base_id) if base_id is not None else None
    template = lock_template(template_id)
    if template.state == TemplateState.ACTIVE:
        return template
    if not can_proceed(template.reactivate):
        raise TransitionConflict(template, "reactivate", reason="its bytes are already removed")
    if base is not None and base.state != TemplateState.ACTIVE:
        raise TransitionConflict(
            template,
            "reactivate",
            reason=f"its base template '{base}' is {base.state}; reactivate the base first",
        )
    template.reactivate()
    template.deactivated_at = None
    template.save(update_fields=["state", "deactivated_at", "updated_at"])
    _enqueue_downloads(template.pk, cancelled_too=True)
    Account.objects.filter(pk=template.account_id).update(used_templates=F("used_templates") + 1)
    record_event(
        template,
        from_state=TemplateState.INACTIVE,
        to_state=template.state,
        actor=actor,
        reason=reason,
    )
    return template


# GC sweep ---------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep removed (or would remove) and what held the rest."""

    dry_run: bool
    skipped: bool = False
    removed: list[dict] = field(default_factory=list)
    removed_count: int = 0
    held: list[dict] = field(default_factory=list)
    held_count: int = 0
    copies_destroyed: int = 0
    batches: int = 0

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "skipped": self.skipped,
            "removed_count": self.removed_count,
            "removed": self.removed,
            "held_count": self.held_count,
            "held": self.held,
            "copies_destroyed": self.copies_destroyed,
        }


def grace_period() -> timedelta:
    """How long a deleted template is kept for a reactivation (STENCIL_GC_GRACE_SECONDS)."""
    return timedelta(seconds=max(settings.STENCIL_GC_GRACE_SECONDS, 0))


def past_grace(queryset: QuerySet[Template], *, now: datetime | None = None) -> QuerySet[Template]:
    """The templates of `queryset` deleted longer than the grace ago. A row without
    `deactivated_at` (made INACTIVE outside template_deactivate) counts as past it."""
    cutoff = (now or timezone.now()) - grace_period()
    return queryset.filter(Q(deactivated_at__isnull=True) | Q(deactivated_at__lte=cutoff))


def _inactive(template_ids: list[int] | None):
    queryset = Template.objects.filter(state=TemplateState.INACTIVE)
    if template_ids is not None:
        queryset = queryset.filter(pk__in=template_ids)
    return queryset


def _describe_holders(template_ids: list[int] | None) -> tuple[list[dict], int]:
    """The INACTIVE templates something still needs, with their live references per kind."""
    held = _inactive(template_ids).filter(has_live_reference())
    counts = reference_counts()
    rows = held.annotate(**counts).order_by("pk").values("uuid", "name", *counts)[:HELD_LIST_LIMIT]
    listed = [
        {
            "id": str(row["uuid"]),
            "name": row["name"],
            "references": {name.removesuffix("_references"): row[name] for name in counts},
        }
        for row in rows
    ]
    return listed, held.count()


def _remove_batch(candidate_ids: list[int], *, actor, actor_label: str) -> list[dict]:
    """Lock, re-check, transition: a deploy that committed a reference first always wins."""
    with transaction.atomic():
        locked_ids = list(
            Template.objects.select_for_update()
            .filter(pk__in=candidate_ids, state=TemplateState.INACTIVE)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        # A new statement after the locks sees every reference committed before we got them.
        removable = list(
            past_grace(Template.objects.filter(pk__in=locked_ids))
            .exclude(has_live_reference())
            .values("pk", "uuid", "name", "account_id", "unique_name")
        )
        if not removable:
            return []
        ids = [row["pk"] for row in removable]
        now = timezone.now()
        bulk_transition(
            Template.objects.filter(pk__in=ids), Template.remove, removed_at=now, updated_at=now
        )
        _release_secondary_bytes(ids)
        bulk_transition(
            TemplateStoreRef.objects.filter(template_id__in=ids),
            TemplateStoreRef.start_destroying,
            updated_at=now,
        )
        # One INSERT … SELECT for the batch's events (Template.__str__ is its name).
        record_events_from(
            Template.objects.filter(pk__in=ids),
            object_repr=F("name"),
            from_state=TemplateState.INACTIVE,
            to_state=TemplateState.REMOVED,
            actor=actor,
            actor_label=actor_label,
            reason="no live reference",
        )
        transaction.on_commit(lambda: template_removed.send(sender=Template, template_ids=ids))
    return removable


def _release_secondary_bytes(template_ids: list[int]) -> None:
    """One UPDATE for the whole batch, whatever the number of owners (a CASE over them): each
    gives back what its copies were charged. The owners' rows are locked after the templates'
    (the sweep's order, a deactivation's too). Portable SQL: `make run` uses SQLite."""
    totals = dict(
        TemplateStoreRef.objects.filter(template_id__in=template_ids, charged_bytes__gt=0)
        .order_by()
        .values_list("template__account_id")
        .annotate(total=Sum("charged_bytes"))
        .values_list("template__account_id", "total")
    )
    if not totals:
        return
    released = Case(
        *(When(pk=account_id, then=Value(total)) for account_id, total in totals.items()),
        default=Value(0),
        output_field=BigIntegerField(),
    )
    Account.objects.filter(pk__in=list(totals)).update(
        used_secondary_bytes=Greatest(F("used_secondary_bytes") - released, Value(0))
    )


def _delete_copy_files(store: ImageStore | None, install_path: str) -> bool:
    """Delete a copy's file, its template.properties and its folder, never outside the store.

    False when the store cannot be reached now: the copy stays DESTROYING for the next sweep.
    """
    if store is None or not install_path:
        return True
    if store.state == ImageStoreState.DISABLED or not Path(store.path).is_dir():
        return False
    root = Path(store.path).resolve()
    image = (root / install_path).resolve()
    if not image.is_relative_to(root) or image == root:
        logger.error("refusing to delete %s: outside store %s", image, root)
        return True
    folder = image.parent
    try:
        for path in (image, folder / "template.properties"):
            path.unlink(missing_ok=True)
        if folder != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError as exc:
        logger.warning("store %s: could not delete %s (%s); retried next sweep", store, image, exc)
        return False
    return True


def destroy_removed_copies(*, batch_size: int) -> int:
    """Delete the bytes of copies in DESTROYING. A crash here is finished by the next sweep.

    Rows are read as values (no model instance per copy); the few stores they live on are
    loaded once.
    """
    destroyed = 0
    last_id = 0
    stores: dict[int, ImageStore] = {}
    while True:
        batch = list(
            TemplateStoreRef.objects.filter(state=StoreRefState.DESTROYING, pk__gt=last_id)
            .order_by("pk")
            .values_list("pk", "store_id", "install_path")[:batch_size]
        )
        if not batch:
            return destroyed
        last_id = batch[-1][0]
        missing = {store_id for _, store_id, _ in batch if store_id not in stores} - {None}
        if missing:
            stores.update(ImageStore.objects.select_related("zone").in_bulk(missing))
        ids = [pk for pk, store_id, path in batch if _delete_copy_files(stores.get(store_id), path)]
        moved = TemplateStoreRef.objects.filter(pk__in=ids)
        bulk_transition(moved, TemplateStoreRef.finish_destroying, updated_at=timezone.now())
        # str(copy): "<template> on <zone>/<store>" or "<template> on direct download".
        record_events_from(
            moved,
            object_repr=Concat(
                F("template__name"),
                Value(" on "),
                Coalesce(
                    Concat(F("store__zone__name"), Value("/"), F("store__name")),
                    Value("direct download"),
                ),
                output_field=CharField(),
            ),
            from_state=StoreRefState.DESTROYING,
            to_state=StoreRefState.DESTROYED,
            actor_label="gc-sweep",
            reason="bytes deleted",
        )
        destroyed += len(ids)


class _SweepLock:
    """At most one sweep at a time (PostgreSQL advisory lock); a second one is skipped."""

    def __enter__(self) -> bool:
        self.held = True
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [GC_ADVISORY_LOCK_KEY])
                self.held = cursor.fetchone()[0]
        return self.held

    def __exit__(self, *exc_info) -> None:
        if self.held and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [GC_ADVISORY_LOCK_KEY])


def gc_sweep(
    *,
    dry_run: bool = False,
    template_ids: list[int] | None = None,
    actor=None,
    actor_label: str = "gc-sweep",
    batch_size: int | None = None,
) -> SweepResult:
    """Remove every INACTIVE template that nothing can need any more and whose grace is over
    (`past_grace`), and delete its bytes; younger ones wait, so they can still be reactivated.

    Set-based: candidates come from one NOT EXISTS query per batch of ids; each batch is
    locked, re-checked and transitioned in its own transaction.
    """
    batch_size = batch_size or settings.STENCIL_GC_BATCH_SIZE
    result = SweepResult(dry_run=dry_run)
    candidates = past_grace(_inactive(template_ids)).exclude(has_live_reference()).order_by("pk")
    # The batches walk the INACTIVE ids (template_inactive_idx) without the reference check;
    # it runs on each batch's id list, as per-row probes. With it in the walk, PostgreSQL
    # hashes every live VM once per batch: the sweep grew with the square of the catalogue.
    walk = past_grace(_inactive(template_ids)).order_by("pk")
    if dry_run:
        rows = candidates.values("uuid", "name")
        result.removed = [{"id": str(r["uuid"]), "name": r["name"]} for r in rows[:HELD_LIST_LIMIT]]
        result.removed_count = candidates.count()
        result.held, result.held_count = _describe_holders(template_ids)
        return result
    with _SweepLock() as acquired:
        if not acquired:
            result.skipped = True
            return result
        last_id = 0
        while True:
            batch = list(walk.filter(pk__gt=last_id).values_list("pk", flat=True)[:batch_size])
            if not batch:
                break
            last_id = batch[-1]
            result.batches += 1
            free = list(
                Template.objects.filter(pk__in=batch)
                .exclude(has_live_reference())
                .values_list("pk", flat=True)
            )
            removed = _remove_batch(free, actor=actor, actor_label=actor_label) if free else []
            result.removed_count += len(removed)
            room = HELD_LIST_LIMIT - len(result.removed)
            result.removed.extend(
                {"id": str(r["uuid"]), "name": r["name"]} for r in removed[: max(room, 0)]
            )
        result.copies_destroyed = destroy_removed_copies(batch_size=batch_size)
    result.held, result.held_count = _describe_holders(template_ids)
    return result
