"""VM record life cycle. Creating a VM takes its template's row lock: it cannot race the sweep."""

from datetime import timedelta

from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_fsm import can_proceed

from templates_app.choices import TemplateState
from templates_app.errors import (
    InvalidInput,
    LimitExceeded,
    StencilError,
    TemplateNotUsable,
    TransitionConflict,
)
from templates_app.events import record_event
from templates_app.locks import lock_template_shared
from templates_app.models import Account, Template, Zone
from templates_app.rescan import ensure_not_quarantined, has_quarantined_copy
from templates_app.selectors import template_in_zone
from templates_app.tasks import gc_sweep_task
from versions_app.channels import checked_channel_name
from versions_app.selectors import channel_is_known, channel_version

from .agent.tasks import (
    url_check_task,
    url_verify_task,
    vm_deploy_task,
    vm_reboot_task,
    vm_rebuild_task,
    vm_snapshot_task,
    vm_sync_domain_task,
)
from .choices import LATEST_CHANNEL, HostState, VmState
from .models import Host, PrimaryPool, VirtualMachine


class NoCapacity(StencilError):
    """No Up host in the zone reaches a primary pool."""

    status_code = 409
    code = "no_host"


def _lock_vm(vm_id: int) -> VirtualMachine:
    return VirtualMachine.objects.select_for_update().get(pk=vm_id)


DEADLINE_FIELDS = ["transition_deadline", "transition_action", "updated_at"]


def _start_deadline(vm: VirtualMachine, action: str) -> None:
    """A host task that moves the VM (deploy, rebuild) starts: its host must record the result
    within STENCIL_VM_TRANSITION_DEADLINE_SECONDS, or the reaper ends it (agents_app.reaper).
    The caller saves the VM."""
    seconds = settings.STENCIL_VM_TRANSITION_DEADLINE_SECONDS
    vm.transition_deadline = timezone.now() + timedelta(seconds=seconds)
    vm.transition_action = action


LATEST_FIELD = "use_latest_template_version"
FOLLOW_FIELD = "follow.channel"


class NothingToFollow(StencilError):
    """A VM asked to follow a channel that points at no version it may use."""

    status_code = 409
    code = "nothing_to_follow"


def followed_channel(*, use_latest_template_version: bool, follow_channel: str) -> tuple[str, str]:
    """The channel a new VM follows ('' for none) and the input field that asked for it:
    oVirt's `use_latest_template_version` is the built-in channel 'latest'."""
    follow_channel = (follow_channel or "").strip()
    if use_latest_template_version:
        if follow_channel and follow_channel != LATEST_CHANNEL:
            raise InvalidInput(
                f"follows 'latest' already: it cannot also follow '{follow_channel}'",
                field=FOLLOW_FIELD,
            )
        return LATEST_CHANNEL, LATEST_FIELD
    return follow_channel, FOLLOW_FIELD


def _lock_channel_version(template_id: int, channel: str, *, account: Account) -> Template:
    """The version channel `channel` of `template_id`'s lineage gives `account`, under its
    shared row lock, re-read after the lock: a promote (or a newer 'latest') committed between
    the read and the lock is taken instead, so a deploy gets one version or the other."""
    template = None
    for _attempt in range(5):
        target = channel_version(template_id, channel, account_id=account.pk)
        if target is None:
            if channel == LATEST_CHANNEL:
                raise TemplateNotUsable(Template.objects.get(pk=template_id))
            raise NothingToFollow(
                f"channel '{channel}' points at no ACTIVE version this account may use",
                field=FOLLOW_FIELD,
            )
        template = lock_template_shared(target.pk)
        again = channel_version(template_id, channel, account_id=account.pk)
        if template.state == TemplateState.ACTIVE and again is not None and again.pk == target.pk:
            return template
    raise TemplateNotUsable(template)


def _lock_usable_template(
    template_id: int, zone: Zone, *, account: Account, stateless: bool, follow: tuple[str, str]
) -> Template:
    """The template a new VM gets, under its shared row lock with the ACTIVE check.

    A follower of a channel (stateless VMs only) names any member of a lineage: it gets the
    channel's version for `account` ('latest': the newest ACTIVE one it may use: public, its
    own, or shared with it).
    """
    channel, field = follow
    if channel and not stateless:
        if channel == LATEST_CHANNEL:
            raise InvalidInput(
                "only a stateless VM may follow the latest template version", field=field
            )
        raise InvalidInput("only a stateless VM may follow a channel", field=field)
    if not channel:
        template = lock_template_shared(template_id)
    else:
        checked_channel_name(channel, field=field)
        if not channel_is_known(template_id, channel):
            raise InvalidInput(f"the template's lineage has no channel '{channel}'", field=field)
        template = _lock_channel_version(template_id, channel, account=account)
    if template.state != TemplateState.ACTIVE:
        raise TemplateNotUsable(template)
    ensure_not_quarantined(template)
    if not template_in_zone(template, zone):
        raise InvalidInput(f"template '{template}' is not available in zone '{zone}'", field="zone")
    return template


def _reserve_vm_slot(account: Account) -> None:
    """Refuse a new VM past the account's `max_vms`; the account row lock makes concurrent
    creates count one another. Taken after the template's lock, in the order a deactivation
    takes them (template, then the account it releases), so the two never deadlock.

    An account with no limit has nothing to count, and takes no lock: the lock serialized
    every deploy of the account (50 concurrent deploys queued on it for up to 1.7 s). A limit
    set meanwhile applies from its commit on; a deploy that read "no limit" before it is one
    that would have gone first under the lock too."""
    if Account.objects.filter(pk=account.pk).values_list("max_vms", flat=True).get() is None:
        return
    locked = Account.objects.select_for_update().get(pk=account.pk)
    if locked.max_vms is None:
        return
    in_use = (
        VirtualMachine.objects.filter(account_id=account.pk).exclude(state=VmState.EXPUNGED).count()
    )
    if in_use >= locked.max_vms:
        raise LimitExceeded(
            f"account '{locked}' already has {in_use} of {locked.max_vms} VMs allowed "
            "(destroyed VMs count until they are expunged)",
            field="max_vms",
        )


@transaction.atomic
def vm_create(
    *,
    name: str,
    template_id: int,
    zone: Zone,
    account: Account,
    actor,
    stateless: bool = False,
    use_latest_template_version: bool = False,
    memory_mib: int = 256,
    vcpus: int = 1,
    follow_channel: str = "",
) -> VirtualMachine:
    """Create a VM on an ACTIVE template; the state check and the new reference share one lock."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("a name is required", field="name")
    follow = followed_channel(
        use_latest_template_version=use_latest_template_version, follow_channel=follow_channel
    )
    template = _lock_usable_template(
        template_id, zone, account=account, stateless=stateless, follow=follow
    )
    _reserve_vm_slot(account)
    vm = VirtualMachine.objects.create(
        name=name,
        template=template,
        zone=zone,
        account=account,
        stateless=stateless,
        follow_channel=follow[0],
        memory_mib=memory_mib,
        vcpus=vcpus,
    )
    record_event(vm, from_state="", to_state=vm.state, actor=actor, reason="created")
    return vm


class VmHasSnapshots(StencilError):
    """Destroy/expunge would strand libvirt snapshot metadata (seed 004)."""

    status_code = 409
    code = "vm_has_snapshots"


def _enqueue_domain_sync(vm: VirtualMachine, **flags: bool) -> None:
    """After commit, the VM's host makes its libvirt domain match the VM's state."""
    if vm.host_id is None:
        return
    queue, vm_id = vm.host.queue, vm.pk
    transaction.on_commit(
        lambda: vm_sync_domain_task.apply_async(kwargs={"vm_id": vm_id, **flags}, queue=queue)
    )


def _refuse_stranded_snapshots(vm: VirtualMachine, *, delete_snapshot_metadata: bool) -> None:
    names = list(vm.snapshots.values_list("name", flat=True))
    if names and not delete_snapshot_metadata:
        raise VmHasSnapshots(
            f"VM '{vm}' has snapshots: {', '.join(names)}; pass delete_snapshot_metadata=true "
            "to delete their metadata (the snapshot data in the disk volume is kept)"
        )


def _transition(vm_id: int, action: str, *, actor, reason: str = "", **flags) -> VirtualMachine:
    vm = VirtualMachine.objects.select_for_update(of=("self",)).select_related("host").get(pk=vm_id)
    method = getattr(vm, action)
    if not can_proceed(method):
        raise TransitionConflict(vm, action)
    before = vm.state
    method()
    now = timezone.now()
    if action == "destroy":
        vm.destroyed_at = now
    if action == "expunge":
        vm.expunged_at = now
    if action == "recover":
        vm.destroyed_at = None
    # A user's move ends whatever deploy or rebuild was in progress (its task then does nothing).
    vm.transition_deadline, vm.transition_action = None, ""
    vm.save()
    record_event(vm, from_state=before, to_state=vm.state, actor=actor, reason=reason or action)
    _enqueue_domain_sync(vm, **flags)
    return vm


@transaction.atomic
def vm_start(*, vm_id: int, actor) -> VirtualMachine:
    """Existing VMs keep working whatever their template's state (seed 000)."""
    return _transition(vm_id, "start", actor=actor)


@transaction.atomic
def vm_reset(*, vm_id: int, actor) -> VirtualMachine:
    """Take a VM out of ERROR: recorded STOPPED, and its host powers the domain off."""
    return _transition(vm_id, "reset", actor=actor, reason="reset from ERROR")


def _lock_followed_version(vm: VirtualMachine) -> Template | None:
    """The version a follower's channel gives its account now, under its shared row lock (taken
    before any VM lock: account -> template -> VM), or None when there is nothing to follow."""
    target = channel_version(vm.template_id, vm.follow_channel, account_id=vm.account_id)
    if target is None:
        return None
    locked = lock_template_shared(target.pk)
    if locked.state != TemplateState.ACTIVE or has_quarantined_copy(locked.pk):
        return None  # a follower stays where it is rather than move onto unusable bytes
    return locked


def _follow(vm: VirtualMachine, target: Template | None) -> bool:
    """Point a locked follower at `target` (locked, ACTIVE); False when it is there."""
    if target is None or vm.template_id == target.pk:
        return False
    before = vm.template_id
    vm.template = target
    vm.save(update_fields=["template", "updated_at"])
    channel = vm.follow_channel
    record_event(
        vm,
        from_state=vm.state,
        to_state=vm.state,
        actor_label="latest-version" if channel == LATEST_CHANNEL else f"channel-{channel}",
        reason=f"follows channel '{channel}': template id {before} -> {target.pk} "
        f"(version {target.version_number})",
    )
    return True


@transaction.atomic
def vm_stop(*, vm_id: int, actor) -> VirtualMachine:
    """Power off. A stateless VM's disk changes are discarded: after the domain is down its host
    makes the root disk again from its template, which for a follower of a channel is first
    moved to the channel's version."""
    vm = VirtualMachine.objects.get(pk=vm_id)
    if not vm.stateless:
        return _transition(vm_id, "stop", actor=actor)
    target = _lock_followed_version(vm) if vm.follow_channel else None
    vm = _transition(vm_id, "stop", actor=actor, rebuild=True)
    if vm.host_id is not None and vm.pool_id is not None:  # what vm_rebuild_on_host needs
        _start_deadline(vm, "rebuild")
        vm.save(update_fields=DEADLINE_FIELDS)
    _follow(vm, target)
    return vm


@transaction.atomic
def vm_rebuild_onto_followed(*, vm_id: int) -> bool:
    """Its channel moved (or a new 'latest' exists): move a STOPPED stateless follower onto the
    channel's version and have its host rebuild the root disk. Other VMs are left alone
    (running followers move when they next stop). True when it was moved."""
    vm = VirtualMachine.objects.get(pk=vm_id)
    if not vm.follow_channel:
        return False
    target = _lock_followed_version(vm)
    vm = _lock_vm(vm_id)
    if not (vm.stateless and vm.follow_channel and vm.state == VmState.STOPPED):
        return False
    if not _follow(vm, target):
        return False
    if vm.host_id is not None:
        _start_deadline(vm, "rebuild")
        vm.save(update_fields=DEADLINE_FIELDS)
        queue, pk = vm.host.queue, vm.pk
        transaction.on_commit(
            lambda: vm_rebuild_task.apply_async(kwargs={"vm_id": pk}, queue=queue)
        )
    return True


@transaction.atomic
def vm_reboot(*, vm_id: int, actor) -> VirtualMachine:
    """Reboot a running VM on its host (answers at once; the host does it)."""
    vm = VirtualMachine.objects.select_related("host").get(pk=vm_id)
    if vm.state != VmState.RUNNING or vm.host_id is None:
        raise TransitionConflict(vm, "reboot", reason="only a running VM on a host reboots")
    queue, pk = vm.host.queue, vm.pk
    transaction.on_commit(lambda: vm_reboot_task.apply_async(kwargs={"vm_id": pk}, queue=queue))
    record_event(vm, from_state=vm.state, to_state=vm.state, actor=actor, reason="reboot")
    return vm


@transaction.atomic
def vm_destroy(
    *,
    vm_id: int,
    actor,
    expunge: bool = False,
    delete_snapshot_metadata: bool = False,
    delete_managed_save: bool = False,
) -> VirtualMachine:
    """Destroy (recoverable; still a reference), or destroy and expunge at once.

    A VM with snapshots is refused (409 listing them) unless the caller deletes their metadata.
    """
    vm = _lock_vm(vm_id)
    _refuse_stranded_snapshots(vm, delete_snapshot_metadata=delete_snapshot_metadata)
    flags = {
        "delete_snapshot_metadata": delete_snapshot_metadata,
        "delete_managed_save": delete_managed_save,
    }
    vm = _transition(vm_id, "destroy", actor=actor, **flags)
    if expunge:
        vm = _expunge(vm.pk, actor=actor, **flags)
    return vm


@transaction.atomic
def vm_recover(*, vm_id: int, actor) -> VirtualMachine:
    return _transition(vm_id, "recover", actor=actor)


def _expunge(vm_id: int, *, actor, **flags) -> VirtualMachine:
    vm = _transition(vm_id, "expunge", actor=actor, **flags)
    if vm.template.state == TemplateState.INACTIVE:
        template_id = vm.template_id
        transaction.on_commit(lambda: gc_sweep_task.delay(template_ids=[template_id]))
    return vm


@transaction.atomic
def vm_expunge(
    *, vm_id: int, actor, delete_snapshot_metadata: bool = False, delete_managed_save: bool = False
) -> VirtualMachine:
    """Expunge a destroyed VM (its host undefines the domain and deletes its disk); if it was
    the last reference of an INACTIVE template, sweep it."""
    vm = _lock_vm(vm_id)
    _refuse_stranded_snapshots(vm, delete_snapshot_metadata=delete_snapshot_metadata)
    return _expunge(
        vm_id,
        actor=actor,
        delete_snapshot_metadata=delete_snapshot_metadata,
        delete_managed_save=delete_managed_save,
    )


def _snapshot_target(vm_id: int) -> VirtualMachine:
    vm = VirtualMachine.objects.select_related("host").get(pk=vm_id)
    if vm.host_id is None:
        raise InvalidInput(f"VM '{vm}' has no host: it is a record only", field="vm")
    if vm.state in (VmState.DESTROYED, VmState.EXPUNGED, VmState.ERROR, VmState.STARTING):
        raise TransitionConflict(vm, "snapshot")
    return vm


def _enqueue_snapshot_action(vm: VirtualMachine, action: str, **kwargs) -> None:
    queue = vm.host.queue
    payload = {"vm_id": vm.pk, "action": action, **kwargs}
    transaction.on_commit(lambda: vm_snapshot_task.apply_async(kwargs=payload, queue=queue))


@transaction.atomic
def vm_snapshot_create(*, vm_id: int, name: str, description: str = "", actor) -> None:
    """Ask the VM's host to take a snapshot; it appears in the list once libvirt has it."""
    vm = _snapshot_target(vm_id)
    name = (name or "").strip()
    if not name or len(name) > 128 or "/" in name:
        raise InvalidInput("1 to 128 characters, no '/'", field="name")
    if vm.snapshots.filter(name=name).exists():
        raise InvalidInput(f"VM '{vm}' already has a snapshot named '{name}'", field="name")
    _enqueue_snapshot_action(vm, "create", name=name, description=description)


@transaction.atomic
def vm_snapshot_revert(*, vm_id: int, name: str, actor) -> None:
    vm = _snapshot_target(vm_id)
    if not vm.snapshots.filter(name=name).exists():
        raise InvalidInput(f"VM '{vm}' has no snapshot named '{name}'", field="name")
    _enqueue_snapshot_action(vm, "revert", name=name)


@transaction.atomic
def vm_snapshot_delete(*, vm_id: int, name: str, actor) -> None:
    vm = VirtualMachine.objects.select_related("host").get(pk=vm_id)
    if not vm.snapshots.filter(name=name).exists():
        raise InvalidInput(f"VM '{vm}' has no snapshot named '{name}'", field="name")
    _enqueue_snapshot_action(vm, "delete", name=name)


def _pick_host_and_pool(zone: Zone) -> tuple[Host, PrimaryPool]:
    """A random Up host of the zone, and a pool of the zone that this host reaches."""
    candidates = list(
        PrimaryPool.hosts.through.objects.filter(
            host__zone=zone, host__state=HostState.UP, primarypool__zone=zone
        )
        .select_related("host", "primarypool")
        .order_by("?")[:1]
    )
    if not candidates:
        raise NoCapacity(f"no Up host in zone '{zone}' reaches a primary pool")
    return candidates[0].host, candidates[0].primarypool


@transaction.atomic
def vm_deploy(
    *,
    name: str,
    template_id: int,
    zone: Zone,
    account: Account,
    actor,
    memory_mib: int = 256,
    vcpus: int = 1,
    stateless: bool = False,
    use_latest_template_version: bool = False,
    follow_channel: str = "",
) -> VirtualMachine:
    """Deploy a VM: the reference is created under the template's lock with the state check,
    and the host's agent makes the disk and starts the domain after commit.

    A stateless VM may follow a channel of `template_id`'s lineage (`follow_channel`; 'latest'
    is also `use_latest_template_version`): it is deployed from the channel's version; a
    stateful one asking for it is a 400.
    """
    name = (name or "").strip()
    if not name:
        raise InvalidInput("a name is required", field="name")
    follow = followed_channel(
        use_latest_template_version=use_latest_template_version, follow_channel=follow_channel
    )
    template = _lock_usable_template(
        template_id, zone, account=account, stateless=stateless, follow=follow
    )
    _reserve_vm_slot(account)
    host, pool = _pick_host_and_pool(zone)
    vm = VirtualMachine(
        name=name,
        template=template,
        zone=zone,
        account=account,
        host=host,
        pool=pool,
        state=VmState.STARTING,
        memory_mib=memory_mib,
        vcpus=vcpus,
        stateless=stateless,
        follow_channel=follow[0],
    )
    _start_deadline(vm, "deploy")
    vm.save()
    record_event(vm, from_state="", to_state=vm.state, actor=actor, reason=f"deploy on {host}")
    queue, vm_id = host.queue, vm.pk
    transaction.on_commit(lambda: vm_deploy_task.apply_async(kwargs={"vm_id": vm_id}, queue=queue))
    return vm


class UrlCheckFailed(StencilError):
    """No host could reach the URL (or verify the image); 400 naming `url`."""

    code = "url_check_failed"


def _ask_hosts(zone: Zone, task, kwargs: dict, *, timeout: float) -> tuple[Host, dict]:
    """Send a check to up to 3 random Up hosts of the zone in turn; the first success wins."""
    hosts = list(Host.objects.filter(zone=zone, state=HostState.UP).order_by("?")[:3])
    if not hosts:
        raise NoCapacity(f"no Up host in zone '{zone}' to check the URL from")
    errors = []
    for host in hosts:
        try:
            answer = task.apply_async(
                kwargs={**kwargs, "host_name": host.name}, queue=host.queue
            ).get(timeout=timeout, disable_sync_subtasks=False)
        except CeleryTimeout:
            errors.append(f"{host.name}: no answer within {timeout:g} s")
            continue
        if answer.get("ok"):
            return host, answer
        errors.append(f"{host.name}: {answer.get('error')}")
    raise UrlCheckFailed("; ".join(errors), field="url")


def direct_download_check(
    *,
    zone: Zone,
    url: str,
    headers: dict[str, str],
    verify: bool = False,
    checksum: str = "",
    image_format: str = "QCOW2",
) -> dict:
    """Registration of a direct-download template: a random Up host of the zone checks the URL
    (and with verify=true streams, hashes and inspects it). Call it outside any transaction:
    it waits for the host's answer."""
    host, answer = _ask_hosts(
        zone,
        url_check_task,
        {"url": url, "headers": headers},
        timeout=settings.STENCIL_URL_CHECK_TIMEOUT,
    )
    answer["host"] = host.name
    if verify:
        vhost, verified = _ask_hosts(
            zone,
            url_verify_task,
            {
                "url": url,
                "headers": headers,
                "checksum": checksum or answer.get("checksum", ""),
                "image_format": image_format,
            },
            timeout=settings.STENCIL_URL_VERIFY_TIMEOUT,
        )
        answer["verified"] = {**verified, "host": vhost.name}
    return answer
