"""Agent-side services: what a host's worker does for a VM, through libvirt and qemu-img.

These run on the host's own queue (`host.<name>`). Each one re-reads the VM and does nothing
when the work is already done, so a redelivered task is harmless.

A deploy (or rebuild) whose template copy another worker is making does not wait for it: the
VM is recorded as waiting on that copy and the task returns; the copy's finish or failure
re-queues it (agents_app.agent.pool_copies).
"""

import contextlib
import logging
import os
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from templates_app.choices import PrimaryPolicy
from templates_app.events import build_event, record_event, record_events
from templates_app.images.qemu import QemuImgError
from templates_app.models import Event

from ..choices import VmState
from ..models import VirtualMachine
from . import virt
from .claims import vm_claim_clear, vm_claim_give_back, vm_claimed, vms_claimed
from .failures import describe, vm_failed
from .pool_copies import (
    PoolCopyFailed,
    PoolCopyInProgress,
    pool_copy_ensure,
    pool_copy_wait_if_in_progress,
    pool_copy_waiter_release,
    store_source_of,
)
from .reconcile import vm_domain_observed

logger = logging.getLogger(__name__)

# Failures a host task expects and reports in its own words; anything else is unexpected: its
# traceback is logged and its text is "<ExceptionType>: <message>".
EXPECTED = (virt.VirtError, QemuImgError, OSError)


def _reason(exc: Exception) -> str:
    if isinstance(exc, EXPECTED):
        return getattr(exc, "message", None) or str(exc)
    logger.exception("unexpected failure in a host task")
    return describe(exc)


def domain_name(vm: VirtualMachine) -> str:
    return f"vm-{vm.uuid}"


# The domain type per libvirt URI, asked once per agent process: a host's capabilities do not
# change while its agent runs, and asking libvirtd costs ~4 ms (11 KB of XML) per deploy.
_domain_types: dict[str, str] = {}


def domain_type_for(uri: str) -> str:
    """The domain type libvirt offers for x86_64 guests: 'test' on the test driver, 'kvm'
    where the host can run KVM, else 'qemu' (asking libvirt beats guessing from /dev/kvm)."""
    if uri.startswith("test:"):
        return "test"
    known = _domain_types.get(uri)
    if known is None:
        caps = virt.connection(uri).getCapabilities()
        kvm = "<domain type='kvm'" in caps or '<domain type="kvm"' in caps
        known = _domain_types[uri] = "kvm" if kvm else "qemu"
    return known


def root_volume_name(vm: VirtualMachine) -> str:
    return f"vm-{vm.uuid}-root.qcow2"


def _make_root_disk(
    vm: VirtualMachine, conn, *, waited_for_attempt: int | None = None
) -> tuple[str, int | None]:
    """CACHE: qcow2 overlay on the pool copy. DIRECT: full copy from the store, nothing cached.

    Raises PoolCopyInProgress (the VM now waits on the copy) before anything is written."""
    template, pool = vm.template, vm.pool
    # A direct-download template has no image store copy: its pool copy is the only source.
    if template.primary_policy == PrimaryPolicy.CACHE or template.direct_download:
        copy = pool_copy_ensure(
            template_id=template.pk,
            pool_id=pool.pk,
            libvirt_uri=vm.host.libvirt_uri,
            host_name=vm.host.name,
            waiter_vm_id=vm.pk,
            waited_for_attempt=waited_for_attempt,
        )
        path = virt.write_overlay(
            conn,
            pool.libvirt_pool_name,
            root_volume_name(vm),
            backing_path=copy.install_path,
            backing_format=template.format.lower(),
            capacity=copy.size or 0,
        )
        return path, copy.pk
    source, store_ref = store_source_of(template)
    path = virt.write_full_copy(
        conn,
        pool.libvirt_pool_name,
        root_volume_name(vm),
        source_path=str(source),
        source_format=template.format.lower(),
        fmt="qcow2",
        capacity=store_ref.size or 0,
    )
    return path, None


def vm_deploy_on_host(*, vm_id: int, waited_for_attempt: int | None = None) -> VirtualMachine:
    """Make the root disk by policy, define the domain and start it; RUNNING or ERROR.

    While another worker makes the template's pool copy, the VM stays STARTING, waiting on that
    copy, and this returns at once; the copy's finish or failure re-queues this deploy (then with
    `waited_for_attempt` on a failure, which this VM reports as its own error).
    """
    if waited_for_attempt is None and pool_copy_wait_if_in_progress(vm_id=vm_id):
        return VirtualMachine.objects.get(pk=vm_id)  # waiting: no claim, no host work yet
    with vm_claimed(vm_id, "deploy") as token:
        if token is None:  # a duplicate delivery: the claim's holder does the work
            return VirtualMachine.objects.get(pk=vm_id)
        return _deploy(vm_id, waited_for_attempt=waited_for_attempt, token=token)


def _deploy(vm_id: int, *, waited_for_attempt: int | None, token: str) -> VirtualMachine:
    vm = VirtualMachine.objects.select_related("template", "host", "pool").get(pk=vm_id)
    outcome = _deploy_vm(vm, waited_for_attempt=waited_for_attempt, token=token)
    if isinstance(outcome, Deployed):
        return _deploy_done(
            vm.pk, disk_path=outcome.disk_path, copy_id=outcome.copy_id, token=token
        )
    return outcome


@dataclass(frozen=True)
class Deployed:
    """A deploy's host side is done (disk made, domain defined and started); not recorded."""

    vm_id: int
    disk_path: str
    copy_id: int | None


def _deploy_vm(
    vm: VirtualMachine, *, waited_for_attempt: int | None, token: str
) -> Deployed | VirtualMachine:
    """The host side of a deploy: Deployed, for the caller to record; or the VM as it is now
    (nothing to do, waiting on a copy, or its failure recorded)."""
    if vm.state != VmState.STARTING or vm.root_disk_path:
        return vm
    conn = virt.connection(vm.host.libvirt_uri)
    try:
        # We hold the claim and nothing is recorded: a root volume here was left by an attempt
        # that died (its claim ran out), and goes before the new one is made.
        virt.delete_volume(conn, vm.pool.libvirt_pool_name, root_volume_name(vm))
        disk_path, copy_id = _make_root_disk(vm, conn, waited_for_attempt=waited_for_attempt)
        xml = virt.domain_xml(
            name=domain_name(vm),
            uuid=str(vm.uuid),
            memory_mib=vm.memory_mib,
            vcpus=vm.vcpus,
            disk_path=disk_path,
            disk_format="qcow2",
            domain_type=domain_type_for(vm.host.libvirt_uri),
        )
        virt.define_domain(conn, xml)
        if not _kept_down(vm):
            virt.start_domain(conn, domain_name(vm))
    except PoolCopyInProgress:
        return VirtualMachine.objects.get(pk=vm.pk)
    except PoolCopyFailed as exc:
        if exc.retryable and vm.template.direct_download:
            moved = _move_to_another_host(vm.pk, exc.message)
            if moved is not None:
                return moved
        return _deploy_failed(vm.pk, exc.message, token=token)
    except Exception as exc:
        reason = _reason(exc)
        _discard_deploy(vm, conn)
        return _deploy_failed(vm.pk, reason, token=token)
    return Deployed(vm.pk, disk_path, copy_id)


def vm_deploys_woken_on_host(*, vm_ids: list[int]) -> list[int]:
    """The deploys a pool copy's finish woke on this host, in one pass (the ids deployed):
    one claiming transaction and one claim keeper for all, then each VM's disk, define and
    start, then one transaction recording every result. Deploy by deploy, the claims, the
    keepers' threads and the commits cost more than the overlays. A VM another host task
    holds goes back to its own vm_deploy_task, which waits for that task."""
    from .tasks import vm_deploy_task

    done: list[Deployed] = []
    with vms_claimed(vm_ids, "deploy") as (token, claimed, busy):
        for vm in VirtualMachine.objects.filter(pk__in=busy).select_related("host"):
            vm_deploy_task.apply_async(kwargs={"vm_id": vm.pk}, queue=vm.host.queue)
        vms = VirtualMachine.objects.filter(pk__in=claimed).select_related(
            "template", "host", "pool"
        )
        for vm in vms.order_by("pk"):
            outcome = _deploy_vm(vm, waited_for_attempt=None, token=token)
            if isinstance(outcome, Deployed):
                done.append(outcome)
        _deploys_done(done, token=token)
    return [outcome.vm_id for outcome in done]


def _discard_deploy(vm: VirtualMachine, conn) -> None:
    """A failed deploy leaves nothing on the host: no domain, no root volume (best effort)."""
    name = domain_name(vm)
    with contextlib.suppress(Exception):
        if virt.domain_state(conn, name) not in ("missing", "shutoff"):
            virt.stop_domain(conn, name, force=True)
        virt.undefine_domain(conn, name)
    with contextlib.suppress(Exception):
        virt.delete_volume(conn, vm.pool.libvirt_pool_name, root_volume_name(vm))


def vm_rebuild_on_host(*, vm_id: int, waited_for_attempt: int | None = None) -> VirtualMachine:
    """Make a stopped VM's root disk again from its (current) template: a stateless VM's disk
    changes are discarded, and a 'latest' follower moves onto the version it was switched to.

    The domain is undefined first (refused while it has snapshots or a managed save: nothing is
    lost then), the old root volume deleted, a new one made the way a deploy makes it, and the
    domain defined again on it, shut off. Errors are recorded on the VM; a repeat redoes it.
    While another worker makes the new template's pool copy, the VM waits on it (nothing is
    touched yet) and the copy's finish or failure re-queues this rebuild.
    """
    for _round in range(SYNC_ROUNDS):
        with vm_claimed(vm_id, "rebuild") as token:
            if token is None:  # the holder rebuilds onto the newest template (see below)
                return VirtualMachine.objects.get(pk=vm_id)
            built_from = VirtualMachine.objects.values_list("template_id", flat=True).get(pk=vm_id)
            vm = _rebuild(vm_id, waited_for_attempt=waited_for_attempt)
        # A rebuild onto a newer version delivered while this one worked left at once: follow it.
        if vm.template_id == built_from or vm.awaited_copy_id or vm.state != VmState.STOPPED:
            break
        waited_for_attempt = None
    return vm


def _rebuild(vm_id: int, *, waited_for_attempt: int | None = None) -> VirtualMachine:
    vm = VirtualMachine.objects.select_related("template", "host", "pool").get(pk=vm_id)
    if vm.state != VmState.STOPPED or vm.host_id is None or vm.pool_id is None:
        return vm
    conn = virt.connection(vm.host.libvirt_uri)
    name = domain_name(vm)
    try:
        _source_ready(vm, waited_for_attempt=waited_for_attempt)
        if virt.domain_state(conn, name) not in ("missing", "shutoff"):
            virt.stop_domain(conn, name, force=True)
        virt.undefine_domain(conn, name)
        if vm.root_volume:
            virt.delete_volume(conn, vm.pool.libvirt_pool_name, vm.root_volume)
        disk_path, copy_id = _make_root_disk(vm, conn)
        xml = virt.domain_xml(
            name=name,
            uuid=str(vm.uuid),
            memory_mib=vm.memory_mib,
            vcpus=vm.vcpus,
            disk_path=disk_path,
            disk_format="qcow2",
            domain_type=domain_type_for(vm.host.libvirt_uri),
        )
        virt.define_domain(conn, xml)
    except PoolCopyInProgress:
        return VirtualMachine.objects.get(pk=vm.pk)
    except PoolCopyFailed as exc:
        return _record_agent_error(vm.pk, f"rebuild: {exc.message}")
    except EXPECTED as exc:
        return _record_agent_error(vm.pk, f"rebuild: {getattr(exc, 'message', None) or exc}")
    except Exception as exc:
        # Half way through, the old disk or domain may be gone: nothing here can start it.
        return vm_failed(vm.pk, f"rebuild: {_reason(exc)}", into_error=True)
    return _rebuild_done(vm.pk, disk_path=disk_path, copy_id=copy_id)


def _source_ready(vm: VirtualMachine, *, waited_for_attempt: int | None = None) -> None:
    """Raise PoolCopyFailed, before anything is deleted, when the template's bytes are not there
    yet (a new version still downloading): the VM keeps its old disk and the next stop retries.
    PoolCopyInProgress: another worker is making the pool copy, and the VM now waits on it."""
    template = vm.template
    if template.primary_policy == PrimaryPolicy.CACHE or template.direct_download:
        pool_copy_ensure(
            template_id=template.pk,
            pool_id=vm.pool_id,
            libvirt_uri=vm.host.libvirt_uri,
            host_name=vm.host.name,
            waiter_vm_id=vm.pk,
            waited_for_attempt=waited_for_attempt,
        )
    else:
        store_source_of(template)


@transaction.atomic
def _rebuild_done(vm_id: int, *, disk_path: str, copy_id: int | None) -> VirtualMachine:
    vm = (
        VirtualMachine.objects.select_for_update(of=("self",))
        .select_related("template")
        .get(pk=vm_id)
    )
    vm.root_disk_path = disk_path
    vm.root_volume = os.path.basename(disk_path)
    vm.pool_copy_id = copy_id
    vm.awaited_copy_id = None
    vm.error_text = ""
    vm.transition_deadline, vm.transition_action = None, ""  # the result is recorded
    vm.save(
        update_fields=[
            "root_disk_path",
            "root_volume",
            "pool_copy",
            "awaited_copy",
            "error_text",
            "transition_deadline",
            "transition_action",
            "updated_at",
        ]
    )
    record_event(
        vm,
        from_state=vm.state,
        to_state=vm.state,
        actor_label="agent",
        reason=f"root disk rebuilt from template '{vm.template}' (id {vm.template_id})",
    )
    return vm


MAX_DEPLOY_HOSTS = 3


@transaction.atomic
def _move_to_another_host(vm_id: int, reason: str) -> VirtualMachine | None:
    """A direct download failed for network reasons: another Up host that reaches the pool tries
    (up to 3 hosts in all). None when no host is left to try."""
    from ..choices import HostState
    from .tasks import vm_deploy_task

    vm = VirtualMachine.objects.select_for_update(of=("self",)).select_related("pool").get(pk=vm_id)
    tried = [*vm.deploy_hosts_tried, vm.host_id]
    if vm.state != VmState.STARTING or len(tried) >= MAX_DEPLOY_HOSTS:
        return None
    other = vm.pool.hosts.filter(state=HostState.UP).exclude(pk__in=tried).order_by("?").first()
    if other is None:
        return None
    vm.deploy_hosts_tried = tried
    vm.host = other
    vm.error_text = reason[:4000]
    vm.save(update_fields=["deploy_hosts_tried", "host", "error_text", "updated_at"])
    record_event(
        vm,
        from_state=vm.state,
        to_state=vm.state,
        actor_label="agent",
        reason=f"download failed ({reason}); retrying on {other.name}",
    )
    queue, pk = other.queue, vm.pk
    transaction.on_commit(lambda: vm_deploy_task.apply_async(kwargs={"vm_id": pk}, queue=queue))
    return vm


def _kept_down(vm: VirtualMachine) -> bool:
    """A free VM of a VM pool is deployed shut off: it starts when a user takes it."""
    return vm.vm_pool_id is not None and vm.taken_by_id is None


@transaction.atomic
def _deploy_done(
    vm_id: int, *, disk_path: str, copy_id: int | None, token: str | None = None
) -> VirtualMachine:
    """Record the deploy's result; with `token`, the host task's claim goes in the same write."""
    vm = VirtualMachine.objects.select_for_update().get(pk=vm_id)
    event = _record_deployed(vm, Deployed(vm_id, disk_path, copy_id))
    vm_claim_give_back(vm, token)
    vm.save()
    event.save()
    return vm


# What _record_deployed changes on a VM (bulk_update of a batch writes these).
DEPLOYED_FIELDS = (
    "state",
    "transition_deadline",
    "transition_action",
    "root_disk_path",
    "root_volume",
    "pool_copy",
    "awaited_copy",
    "host_task_token",
    "host_task_name",
    "host_task_expires_at",
    "updated_at",
)


@transaction.atomic
def _deploys_done(done: list[Deployed], *, token: str) -> None:
    """_deploy_done for a batch (vm_deploys_woken_on_host): one transaction, one UPDATE and
    one INSERT of events for all; the batch's claims are given back in the same write."""
    if not done:
        return
    outcomes = {outcome.vm_id: outcome for outcome in done}
    vms = list(VirtualMachine.objects.select_for_update().filter(pk__in=outcomes).order_by("pk"))
    now = timezone.now()
    events = []
    for vm in vms:
        events.append(_record_deployed(vm, outcomes[vm.pk]))
        vm_claim_clear(vm, token)
        vm.updated_at = now  # bulk_update leaves auto_now fields alone
    VirtualMachine.objects.bulk_update(vms, DEPLOYED_FIELDS)
    record_events(events)


def _record_deployed(vm: VirtualMachine, outcome: Deployed) -> Event:
    """Apply a deploy's result to the locked VM (the caller saves it); its event, unsaved."""
    before = vm.state
    late = vm.state != VmState.STARTING  # the reaper, or a user's stop or destroy, ended it
    vm.transition_deadline, vm.transition_action = None, ""  # the result is recorded
    if not late:  # a late one keeps its state; its disk is recorded so destroy/expunge clean it
        vm.stop() if _kept_down(vm) else vm.mark_running()
    vm.root_disk_path = outcome.disk_path
    vm.root_volume = os.path.basename(outcome.disk_path)
    vm.pool_copy_id = outcome.copy_id
    vm.awaited_copy_id = None
    return build_event(
        vm,
        from_state=before,
        to_state=vm.state,
        actor_label="agent",
        reason=f"deployed after the VM became {vm.state}" if late else "deployed",
    )


@transaction.atomic
def _deploy_failed(vm_id: int, reason: str, *, token: str | None = None) -> VirtualMachine:
    """Record the deploy's failure; with `token`, the claim goes in the same write."""
    vm = VirtualMachine.objects.select_for_update().get(pk=vm_id)
    if vm.state != VmState.STARTING:
        return vm
    vm.fail_deploy()
    vm.transition_deadline, vm.transition_action = None, ""  # the result is recorded
    vm.error_text = reason[:4000]
    vm.awaited_copy_id = None
    vm_claim_give_back(vm, token)
    vm.save()
    record_event(
        vm, from_state=VmState.STARTING, to_state=vm.state, actor_label="agent", reason=reason
    )
    return vm


def vm_copy_wait_recheck(*, vm_id: int) -> VirtualMachine:
    """A waiting VM's safety net (pool_copies._schedule_recheck): when the copy it waits on has
    no live worker any more, run its deploy (or rebuild) now, which takes the copy over."""
    if pool_copy_waiter_release(vm_id=vm_id):
        vm = VirtualMachine.objects.get(pk=vm_id)
        if vm.state == VmState.STARTING:
            return vm_deploy_on_host(vm_id=vm_id)
        if vm.state == VmState.STOPPED:
            return vm_rebuild_on_host(vm_id=vm_id)
    return VirtualMachine.objects.get(pk=vm_id)


def _record_agent_error(vm_id: int, reason: str) -> VirtualMachine:
    # A result is recorded: a rebuild in progress is over (its deadline goes).
    VirtualMachine.objects.filter(pk=vm_id).update(
        error_text=reason[:4000], transition_deadline=None, transition_action=""
    )
    return VirtualMachine.objects.get(pk=vm_id)


def vm_sync_domain(
    *,
    vm_id: int,
    delete_snapshot_metadata: bool = False,
    delete_managed_save: bool = False,
    rebuild: bool = False,
) -> VirtualMachine:
    """Make the libvirt domain match the VM's state; repeating it changes nothing.

    With `rebuild` (a stateless VM was stopped), a STOPPED VM's root disk is then made again
    from its template (`vm_rebuild_on_host`), after the domain is down.

    EXPUNGED undefines the domain (with the metadata flags the caller gave) and deletes the root
    volume, except when snapshots lived in it: then the volume is kept and reported.
    """
    for attempt in range(SYNC_ROUNDS):
        with vm_claimed(vm_id, "sync") as token:
            if token is None:  # the holder follows the VM's newest state (see below)
                return VirtualMachine.objects.get(pk=vm_id)
            vm, followed = _sync(
                vm_id,
                delete_snapshot_metadata=delete_snapshot_metadata,
                delete_managed_save=delete_managed_save,
                rebuild=rebuild and attempt == 0,
            )
        # A sync delivered while this one held the claim left at once. If the VM's state moved
        # meanwhile, this one follows it: checked after giving the claim back, nothing is missed.
        if (
            VirtualMachine.objects.filter(pk=vm_id).values_list("state", flat=True).get()
            == followed
        ):
            break
    return vm


# How many times one sync follows a VM whose state keeps moving while it works.
SYNC_ROUNDS = 3


def _sync(
    vm_id: int, *, delete_snapshot_metadata: bool, delete_managed_save: bool, rebuild: bool
) -> tuple[VirtualMachine, str]:
    """One pass of vm_sync_domain (the caller holds the claim): (the VM, the state followed)."""
    vm = VirtualMachine.objects.select_related("host", "pool").get(pk=vm_id)
    followed = vm.state
    conn = virt.connection(vm.host.libvirt_uri)
    name = domain_name(vm)
    try:
        state = virt.domain_state(conn, name)
        if vm.state == VmState.RUNNING and state == "missing":
            # Nothing to start: the record must not stay RUNNING.
            corrected = vm_domain_observed(
                vm.pk, state, expected_state=VmState.RUNNING, reason="start"
            )
            return corrected or VirtualMachine.objects.get(pk=vm.pk), followed
        if vm.state == VmState.RUNNING and state != "running":
            virt.start_domain(conn, name)
        elif vm.state != VmState.RUNNING and state not in ("missing", "shutoff"):
            virt.stop_domain(conn, name, force=True)
        if delete_snapshot_metadata and vm.state == VmState.DESTROYED:
            for snapshot in virt.snapshot_list(conn, name):
                virt.snapshot_delete(conn, name, snapshot, metadata_only=True)
            vm.snapshots.all().delete()
        if vm.state == VmState.EXPUNGED:
            done = _undefine_and_clean(vm, conn, delete_snapshot_metadata, delete_managed_save)
            return done, followed
    except virt.VirtError as exc:
        return _sync_failed(vm, conn, exc.message), followed
    except Exception as exc:
        return vm_failed(vm.pk, f"sync: {_reason(exc)}", into_error=True), followed
    if rebuild and vm.state == VmState.STOPPED:
        return _rebuild(vm.pk), followed
    return vm, followed


def _sync_failed(vm: VirtualMachine, conn, message: str) -> VirtualMachine:
    """A start or stop that libvirt refused: the record follows what the domain now is (a
    start that failed leaves the VM STOPPED, not RUNNING), with libvirt's message."""
    with contextlib.suppress(Exception):
        observed = virt.domain_state(conn, domain_name(vm))
        corrected = vm_domain_observed(vm.pk, observed, expected_state=vm.state, reason=message)
        if corrected is not None:
            return corrected
    return _record_agent_error(vm.pk, message)


def _undefine_and_clean(vm, conn, delete_snapshot_metadata: bool, delete_managed_save: bool):
    name = domain_name(vm)
    had_snapshots = (
        bool(virt.snapshot_list(conn, name))
        if virt.domain_state(conn, name) != "missing"
        else vm.snapshots.exists()
    )
    virt.undefine_domain(
        conn,
        name,
        delete_snapshot_metadata=delete_snapshot_metadata,
        delete_managed_save=delete_managed_save,
    )
    vm.snapshots.all().delete()
    if had_snapshots:
        note = f"snapshot data kept in volume {vm.root_disk_path}"
        VirtualMachine.objects.filter(pk=vm.pk).update(error_text="")
        record_event(vm, from_state=vm.state, to_state=vm.state, actor_label="agent", reason=note)
    elif vm.root_volume:
        virt.delete_volume(conn, vm.pool.libvirt_pool_name, vm.root_volume)
    return VirtualMachine.objects.get(pk=vm.pk)


def vm_snapshot_on_host(*, vm_id: int, action: str, name: str, description: str = "") -> None:
    """Create, revert or delete one snapshot through libvirt, then record it here."""
    with vm_claimed(vm_id, f"snapshot {action} {name}") as token:
        if token is not None:
            _snapshot(vm_id, action=action, name=name, description=description)


def _snapshot(vm_id: int, *, action: str, name: str, description: str) -> None:
    from ..models import VmSnapshot

    vm = VirtualMachine.objects.select_related("host").get(pk=vm_id)
    conn = virt.connection(vm.host.libvirt_uri)
    domain = domain_name(vm)
    try:
        if action == "create":
            if name not in virt.snapshot_list(conn, domain):
                virt.snapshot_create(conn, domain, name, description=description)
            VmSnapshot.objects.get_or_create(
                vm=vm, name=name, defaults={"description": description}
            )
        elif action == "revert":
            virt.snapshot_revert(conn, domain, name)
        elif action == "delete":
            virt.snapshot_delete(conn, domain, name)
            VmSnapshot.objects.filter(vm=vm, name=name).delete()
        else:
            raise ValueError(f"unknown snapshot action {action!r}")
    except Exception as exc:
        _record_agent_error(vm.pk, f"snapshot {action} {name}: {_reason(exc)}")


def vm_reboot_on_host(*, vm_id: int) -> VirtualMachine:
    """Reboot a running domain; errors are recorded on the VM."""
    with vm_claimed(vm_id, "reboot") as token:
        vm = VirtualMachine.objects.select_related("host").get(pk=vm_id)
        if token is None or vm.state != VmState.RUNNING:
            return vm
        try:
            virt.reboot_domain(virt.connection(vm.host.libvirt_uri), domain_name(vm))
        except Exception as exc:
            return _record_agent_error(vm.pk, f"reboot: {_reason(exc)}")
        return vm


def vm_disk_to_store(*, vm_id: int, ref_id: int):
    """Host side of "version from a VM": flatten the VM's root disk into the image store copy
    (the stores are mounted on hosts), inspected and renamed like a download."""
    from templates_app.copies import store_copy_from_local
    from templates_app.images.qemu import qemu_img_convert
    from templates_app.models import TemplateStoreRef

    vm = VirtualMachine.objects.get(pk=vm_id)

    def write(temp):
        qemu_img_convert(vm.root_disk_path, "QCOW2", temp, "QCOW2")

    # The claim keeps the VM's other host tasks (a start) off the disk while it is read.
    with vm_claimed(vm_id, "disk-to-store") as token:
        if token is None:
            return TemplateStoreRef.objects.get(pk=ref_id)
        return store_copy_from_local(ref_id=ref_id, write=write)
