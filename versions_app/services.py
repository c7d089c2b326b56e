"""Creating template versions (seed 002): numbered by the server under the base's row lock."""

from typing import Any

from django.db import transaction
from django.db.models import Max

from templates_app.choices import TemplateState
from templates_app.errors import InvalidInput, TransitionConflict
from templates_app.images.checksums import normalize_checksum
from templates_app.locks import lock_template
from templates_app.models import Account, Template, TemplateStoreRef, Zone
from templates_app.services import (
    VERSION_NAME_MAX_LENGTH,
    _validate_kind_and_format,
    refuse_featuring_by_non_staff,
    stores_for,
    template_create,
    template_create_planned,
    template_registration_plan,
)
from templates_app.uploads import UploadParams, signed_upload_params, upload_copy

from .signals import send_version_usable

BASE_FIELD = "version.base_template"


def _may_add_versions(actor, base: Template) -> bool:
    """The base's owners and staff; None is a trusted system caller (commands, tasks)."""
    if actor is None or getattr(actor, "is_staff", False):
        return True
    return base.account.members.filter(pk=actor.pk).exists()


def _inherited(base: Template, given: dict[str, Any]) -> dict[str, Any]:
    """The base's registration fields that `given` does not set: a version starts as its base."""
    inherited: dict[str, Any] = {
        "name": base.name,
        "display_text": base.display_text,
        "kind": base.kind,
        "image_format": base.format,
        "url": base.url,
        "checksum": base.checksum,
        "os_type": base.os_type,
        "hypervisor": base.hypervisor,
        "is_public": base.is_public,
        "is_featured": base.is_featured,
        "direct_download": base.direct_download,
        "primary_policy": base.primary_policy,
    }
    if "zones" not in given and "cross_zones" not in given:
        inherited["cross_zones"] = base.cross_zones
        inherited["zones"] = [] if base.cross_zones else list(base.zones.all())
    if "details" not in given:
        inherited["details"] = [{"key": d.key, "value": d.value} for d in base.details.all()]
    return {name: value for name, value in inherited.items() if name not in given}


def _lock_base(base_template_id: int, actor) -> Template:
    """Lock the base and check that `actor` may add a version to it now."""
    try:
        base = lock_template(base_template_id)
    except Template.DoesNotExist:
        base = None
    return _check_base(base, base_template_id, actor)


def _check_base(base: Template | None, base_template_id: int, actor) -> Template:
    if base is None:
        raise InvalidInput(f"unknown template id {base_template_id}", field=BASE_FIELD)
    if not _may_add_versions(actor, base):
        raise InvalidInput(
            "only members of the base template's account (or administrators) may add versions",
            field=BASE_FIELD,
        )
    if base.base_id is not None:
        raise InvalidInput(
            f"template '{base}' is version {base.version_number} of another template; "
            "a version of a version is not allowed: give the base template",
            field=BASE_FIELD,
        )
    if base.state != TemplateState.ACTIVE:
        raise TransitionConflict(
            base, "add a version to", reason="only an ACTIVE template gets new versions"
        )
    return base


def _next_number(base: Template) -> int:
    """max+1 over the lineage (the base is 1); REMOVED versions keep their numbers."""
    highest = base.versions.aggregate(highest=Max("version_number"))["highest"]
    return (highest or 1) + 1


def template_version_create(
    *,
    base_template_id: int,
    actor,
    version_name: str = "",
    account: Account | None = None,
    **fields: Any,
) -> Template:
    """Register a new version of a base template and give it the lineage's next number.

    `fields` are `template_register`'s (name, image_format, url, checksum, zones, ...); each one
    not given is the base's. The registration is checked first (a direct-download URL by a
    host, with no lock held), then the base is locked, re-checked, and the version written and
    numbered in one transaction. It belongs to the base's account. Lock order: the base's row,
    then the account's (in `template_create`), the order `template_deactivate` takes them in.
    """
    version_name = _checked_version_name(version_name)
    refuse_featuring_by_non_staff(actor, fields.get("is_featured", False))
    base = _check_base(
        Template.objects.select_related("account").filter(pk=base_template_id).first(),
        base_template_id,
        actor,
    )
    if account is not None and account.pk != base.account_id:
        raise InvalidInput(
            f"a version belongs to its base template's account '{base.account}'", field="account"
        )
    if fields.get("kind", base.kind) != base.kind:
        raise InvalidInput(
            f"a version has the kind of its base template ({base.kind})", field="kind"
        )
    plan = template_registration_plan(**{**_inherited(base, fields), **fields})
    with transaction.atomic():
        base = _lock_base(base_template_id, actor)
        version = template_create_planned(
            plan,
            account_id=base.account_id,
            actor=actor,
            base=base,
            version_number=_next_number(base),
            version_name=version_name,
        )
        # Launch permissions go with the lineage: whoever could deploy the base can deploy this.
        version.shared_with.set(base.shared_with.all())
        if version.direct_download:
            _version_usable_on_commit(version)
    return version


def template_version_for_bytes(
    *, base_template_id: int, actor, zone: Zone, version_name: str, image_format: str = "QCOW2"
) -> tuple[Template, TemplateStoreRef]:
    """A new version whose bytes will be written by someone else (a VM's disk flattened by its
    host): numbered under the base's lock, one NOT_DOWNLOADED copy on a random store of `zone`,
    no download queued, private and shared with nobody. Call inside the caller's transaction."""
    base = _lock_base(base_template_id, actor)
    (store,) = stores_for([zone], is_public=False)
    version = template_create(
        account_id=base.account_id,
        actor=actor,
        name=base.name,
        zones=[zone],
        copies=[TemplateStoreRef(store=store)],
        reason=f"version {_next_number(base)} {version_name}".strip(),
        display_text=base.display_text,
        kind=base.kind,
        format=image_format,
        url="",
        os_type=base.os_type,
        hypervisor=base.hypervisor,
        # A VM's disk may hold its account's data: private to that account, whatever the base.
        is_public=False,
        is_featured=False,
        primary_policy=base.primary_policy,
        base=base,
        version_number=_next_number(base),
        version_name=_checked_version_name(version_name),
    )
    return version, version.store_refs.get()


def _checked_version_name(version_name: str) -> str:
    version_name = (version_name or "").strip()
    if len(version_name) > VERSION_NAME_MAX_LENGTH:
        raise InvalidInput(
            f"no more than {VERSION_NAME_MAX_LENGTH} characters", field="version.version_name"
        )
    return version_name


def _version_usable_on_commit(version: Template) -> None:
    template_id, lineage_id = version.pk, version.lineage_id
    transaction.on_commit(
        lambda: send_version_usable(template_id=template_id, lineage_id=lineage_id)
    )


@transaction.atomic
def template_version_upload_params(
    *,
    base_template_id: int,
    actor,
    zone: Zone,
    base_url: str,
    version_name: str = "",
    image_format: str = "",
    checksum: str = "",
    size: int = 0,
) -> UploadParams:
    """ "Upload a new version's bytes": the next version of the base, numbered under its lock,
    with one NOT_UPLOADED copy in `zone` and the account charged, and the signed URL the bytes
    are POSTed to (templates_app.uploads, as for any upload). It inherits the base's fields
    and launch permissions; it is deployable once the upload is READY."""
    version_name = _checked_version_name(version_name)
    base = _lock_base(base_template_id, actor)
    image_format = image_format or base.format
    _validate_kind_and_format(base.kind, image_format)
    copy = upload_copy(zone, size=size)
    number = _next_number(base)
    version = template_create(
        account_id=base.account_id,
        actor=actor,
        name=base.name,
        zones=[zone],
        copies=[copy],
        secondary_bytes=size,
        reason=f"version {number} upload requested",
        display_text=base.display_text,
        kind=base.kind,
        format=image_format,
        checksum=normalize_checksum(checksum),
        os_type=base.os_type,
        hypervisor=base.hypervisor,
        is_public=base.is_public,
        is_featured=False,
        primary_policy=base.primary_policy,
        base=base,
        version_number=number,
        version_name=version_name,
    )
    version.shared_with.set(base.shared_with.all())
    return signed_upload_params(version, base_url=base_url)
