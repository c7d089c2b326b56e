"""Creating template versions (seed 002): numbered by the server under the base's row lock."""

from typing import Any

from django.db import transaction
from django.db.models import Max

from templates_app.choices import TemplateState
from templates_app.errors import InvalidInput, TransitionConflict
from templates_app.events import record_event
from templates_app.locks import lock_account, lock_template
from templates_app.models import Account, Template, TemplateStoreRef
from templates_app.services import VERSION_NAME_MAX_LENGTH, template_register

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
        raise InvalidInput(f"unknown template id {base_template_id}", field=BASE_FIELD) from None
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


@transaction.atomic
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
    not given is the base's. The version is registered by `template_register` itself (same
    validation, account charge, store copies and downloads), in this transaction, and belongs
    to the base's account. Lock order: the base's row, then the account's (in
    `template_register`) — the order `template_deactivate` takes them in.
    """
    version_name = (version_name or "").strip()
    if len(version_name) > VERSION_NAME_MAX_LENGTH:
        raise InvalidInput(
            f"no more than {VERSION_NAME_MAX_LENGTH} characters", field="version.version_name"
        )
    base = _lock_base(base_template_id, actor)
    if account is not None and account.pk != base.account_id:
        raise InvalidInput(
            f"a version belongs to its base template's account '{base.account}'", field="account"
        )
    if fields.get("kind", base.kind) != base.kind:
        raise InvalidInput(
            f"a version has the kind of its base template ({base.kind})", field="kind"
        )
    params = {**_inherited(base, fields), **fields}
    version = template_register(account=base.account, actor=actor, **params)
    version.base = base
    version.version_number = _next_number(base)
    version.version_name = version_name
    version.save(update_fields=["base", "version_number", "version_name", "updated_at"])
    # Launch permissions go with the lineage: whoever could deploy the base can deploy this.
    version.shared_with.set(base.shared_with.all())
    from .tasks import rebuild_latest_followers_task

    base_id = base.pk
    transaction.on_commit(lambda: rebuild_latest_followers_task.delay(base_template_id=base_id))
    return version


def rebuild_latest_followers(*, base_template_id: int) -> int:
    """A new version exists: every STOPPED stateless VM of the lineage that follows 'latest' is
    moved onto the newest ACTIVE version at once, and its host rebuilds its root disk (id, uuid,
    name, zone, account and stateless flag stay). Running ones move when they next stop
    (`vm_stop`). One transaction per VM; returns how many moved."""
    from agents_app.choices import VmState
    from agents_app.models import VirtualMachine
    from agents_app.services import vm_rebuild_onto_latest

    from .selectors import lineage_of, lineage_root_id

    root_id = lineage_root_id(base_template_id)
    if root_id is None:
        return 0
    followers = VirtualMachine.objects.filter(
        stateless=True,
        use_latest_template_version=True,
        state=VmState.STOPPED,
        template__in=lineage_of(root_id).values("pk"),
    ).values_list("pk", flat=True)
    return sum(vm_rebuild_onto_latest(vm_id=vm_id) for vm_id in list(followers))


@transaction.atomic
def template_version_from_vm(*, vm_id: int, actor, version_name: str = "") -> Template:
    """oVirt's "create a version from a VM": the VM's host flattens its root disk
    (`qemu-img convert -f qcow2 -O qcow2`) into an image store as the new version's bytes.

    The VM must be on a host and STOPPED, so the disk is consistent. The version is numbered
    under the base's lock like any other and becomes deployable when its copy is READY.
    """
    from agents_app.choices import VmState
    from agents_app.models import VirtualMachine
    from templates_app.services import _stores_for, charge_account, create_template_row

    vm = VirtualMachine.objects.select_related("template", "host", "zone").get(pk=vm_id)
    base = vm.template.base or vm.template
    base = _lock_base(base.pk, actor)
    if vm.host_id is None or vm.state != VmState.STOPPED:
        raise TransitionConflict(vm, "create a version from", reason="stop the VM on its host")
    account = lock_account(base.account_id)
    charge_account(account)
    version = create_template_row(
        account=account,
        name=base.name,
        display_text=base.display_text,
        kind=base.kind,
        format="QCOW2",
        url="",
        os_type=base.os_type,
        hypervisor=base.hypervisor,
        is_public=base.is_public,
        is_featured=base.is_featured,
        primary_policy=base.primary_policy,
        base=base,
        version_number=_next_number(base),
        version_name=(version_name or f"from {vm.name}").strip()[:VERSION_NAME_MAX_LENGTH],
    )
    version.zones.set([vm.zone])
    version.shared_with.set(base.shared_with.all())
    (store,) = _stores_for([vm.zone], is_public=False)
    ref = TemplateStoreRef.objects.create(template=version, store=store)
    record_event(
        version,
        from_state="",
        to_state=version.state,
        actor=actor,
        reason=f"version {version.version_number} from VM {vm.name}",
    )
    from agents_app.tasks import vm_disk_to_store_task

    queue, payload = vm.host.queue, {"vm_id": vm.pk, "ref_id": ref.pk}
    transaction.on_commit(lambda: vm_disk_to_store_task.apply_async(kwargs=payload, queue=queue))
    return version
