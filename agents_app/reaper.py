"""The reaper's compute half: pool copies, VM deploys and rebuilds, and certificate installs
whose owner went away (beat, every STENCIL_REAPER_INTERVAL_SECONDS; docs/operations.md).

- A pool copy in DOWNLOAD_IN_PROGRESS whose lease ran out a whole lease length ago has no live
  task: its worker stopped renewing, and its waiters' own re-checks (scheduled at the lease's
  end, agents_app.agent.pool_copies) would have taken it over by then. It goes DOWNLOAD_ERROR
  with the reason, and its waiters are woken through the copy's failure path (each reports the
  failure; the next deploy copies again, deleting what the dead worker left).
- A VM past its transition_deadline (a deploy in STARTING, a rebuild of a STOPPED VM) whose host
  recorded nothing on the row for a whole deadline goes ERROR with the reason. It is not
  re-queued: a redelivered host task (acks_late) already covers a worker that died, so a missed
  deadline means the task hangs or its host is gone, and until host tasks carry a claim a second
  deploy of the same VM could run beside a slow first one. A VM whose template copy on its pool
  is being made under a live lease (it waits on it, or its own deploy makes it) is left alone.
- A host certificate PENDING (install) or REMOVING (removal) past
  STENCIL_CERTIFICATE_DEADLINE_SECONDS is re-queued once to its host when the host is Up, then
  FAILED with the reason (the host's agent sync retries FAILED rows when it starts).

Each kind in bounded batches of ids (BATCH_SIZE); each move under the row's lock with a
re-check, one event per object; tasks are sent after commit.
"""

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from templates_app.events import record_event

from .agent.pool_copies import lease_length, pool_copy_end_in_error
from .certificates import certificate_task_enqueue as enqueue_certificate_task
from .choices import HostState, PoolCopyState, VmState
from .models import HostCertificate, HostCertificateState, TemplatePoolRef, VirtualMachine

BATCH_SIZE = 500
ACTOR_LABEL = "reaper"
# Which state each deadline is for: the reaper only ends a VM still in it.
ACTION_STATES = {"deploy": VmState.STARTING, "rebuild": VmState.STOPPED}
CERTIFICATE_ACTIONS = {
    HostCertificateState.PENDING: "install",
    HostCertificateState.REMOVING: "remove",
}


@dataclass
class ReapResult:
    pool_copies_failed: int = 0
    vms_failed: int = 0
    certificates_requeued: int = 0
    certificates_failed: int = 0
    woken_vms: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def vm_deadline() -> timedelta:
    return timedelta(seconds=settings.STENCIL_VM_TRANSITION_DEADLINE_SECONDS)


def certificate_deadline() -> timedelta:
    return timedelta(seconds=settings.STENCIL_CERTIFICATE_DEADLINE_SECONDS)


def reap_expired(*, now: datetime | None = None, batch_size: int = BATCH_SIZE) -> ReapResult:
    """One run: pool copies first (so their waiters are woken, not failed), then VMs, then
    certificates; at most `batch_size` of each. A repeat finds nothing left to do."""
    now = now or timezone.now()
    result = ReapResult()
    for ref_id in _ids(TemplatePoolRef.objects.filter(pool_copy_dead_q(now=now)), batch_size):
        woken = _reap_pool_copy(ref_id, now=now)
        if woken is not None:
            result.pool_copies_failed += 1
            result.woken_vms += woken
    for vm_id in _ids(VirtualMachine.objects.filter(vm_overdue_q(now=now)), batch_size):
        result.vms_failed += _reap_vm(vm_id, now=now)
    for row_id in _ids(HostCertificate.objects.filter(certificate_overdue_q(now=now)), batch_size):
        outcome = _reap_certificate(row_id, now=now)
        result.certificates_requeued += outcome == "requeued"
        result.certificates_failed += outcome == "failed"
    return result


def _ids(queryset, batch_size: int) -> list[int]:
    return list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])


# Pool copies ---------------------------------------------------------------------------------


def pool_copy_dead_q(*, now: datetime) -> Q:
    """In progress, and its lease ran out a lease length ago (or there is none)."""
    return Q(state=PoolCopyState.DOWNLOAD_IN_PROGRESS) & (
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now - lease_length())
    )


@transaction.atomic
def _reap_pool_copy(ref_id: int, *, now: datetime) -> list[int] | None:
    """DOWNLOAD_ERROR and its waiters woken (their ids); None when it moved on meanwhile."""
    ref = TemplatePoolRef.objects.select_for_update().filter(pk=ref_id).first()
    if (
        ref is None
        or not TemplatePoolRef.objects.filter(pk=ref_id).filter(pool_copy_dead_q(now=now)).exists()
    ):
        return None
    expired = ref.lease_expires_at
    reason = (
        "no worker finished the copy: its lease ran out"
        + (f" at {expired.isoformat(timespec='seconds')}" if expired else "")
        + " (the worker went away); the next deploy copies it again"
    )
    return pool_copy_end_in_error(ref, reason, actor_label=ACTOR_LABEL)


# VMs -----------------------------------------------------------------------------------------


def vm_overdue_q(*, now: datetime) -> Q:
    """Past its deadline, and nothing recorded on the row for a whole deadline (a host that
    reports waiting, a copy that wakes it, a move to another host all touch `updated_at`)."""
    return Q(
        transition_deadline__lte=now,
        updated_at__lte=now - vm_deadline(),
        state__in=list(set(ACTION_STATES.values())),
    )


def _copy_in_progress(vm: VirtualMachine, now: datetime) -> bool:
    """The VM's template copy on its pool is being made under a live lease (it waits on it,
    or its own deploy makes it): the copy's finish or failure moves the VM on."""
    if vm.pool_id is None and vm.awaited_copy_id is None:
        return False
    mine = Q(pk=vm.awaited_copy_id) if vm.awaited_copy_id else Q(pk__in=[])
    if vm.pool_id is not None:
        mine |= Q(template_id=vm.template_id, pool_id=vm.pool_id)
    return (
        TemplatePoolRef.objects.filter(mine)
        .filter(state=PoolCopyState.DOWNLOAD_IN_PROGRESS, lease_expires_at__gt=now)
        .exists()
    )


@transaction.atomic
def _reap_vm(vm_id: int, *, now: datetime) -> bool:
    """ERROR with the reason; False when the VM moved on, or waits on a live copy."""
    vm = (
        VirtualMachine.objects.select_for_update(of=("self",))
        .select_related("host")
        .filter(pk=vm_id)
        .first()
    )
    if (
        vm is None
        or not VirtualMachine.objects.filter(pk=vm_id).filter(vm_overdue_q(now=now)).exists()
    ):
        return False
    action = vm.transition_action
    if ACTION_STATES.get(action) != vm.state:
        # A stale deadline (its action is not what the VM is doing): nothing is in progress.
        VirtualMachine.objects.filter(pk=vm.pk).update(
            transition_deadline=None, transition_action=""
        )
        return False
    if _copy_in_progress(vm, now):
        return False
    host = f"host {vm.host.name} ({vm.host.get_state_display()})" if vm.host else "no host"
    seconds = settings.STENCIL_VM_TRANSITION_DEADLINE_SECONDS
    reason = f"{action} did not finish: {host} recorded no result within {seconds} s"
    before = vm.state
    vm.miss_deadline()
    vm.error_text = reason
    vm.awaited_copy = None
    vm.transition_deadline, vm.transition_action = None, ""
    vm.save()
    record_event(vm, from_state=before, to_state=vm.state, actor_label=ACTOR_LABEL, reason=reason)
    return True


# Certificates --------------------------------------------------------------------------------


def certificate_overdue_q(*, now: datetime) -> Q:
    return Q(state__in=list(CERTIFICATE_ACTIONS), updated_at__lte=now - certificate_deadline())


@transaction.atomic
def _reap_certificate(row_id: int, *, now: datetime) -> str:
    """'requeued' (once per state, host Up), 'failed', or '' when it moved on meanwhile."""
    row = (
        HostCertificate.objects.select_for_update(of=("self",))
        .select_related("host", "certificate")
        .filter(pk=row_id)
        .first()
    )
    if (
        row is None
        or not HostCertificate.objects.filter(pk=row_id)
        .filter(certificate_overdue_q(now=now))
        .exists()
    ):
        return ""
    action = CERTIFICATE_ACTIONS[row.state]
    seconds = settings.STENCIL_CERTIFICATE_DEADLINE_SECONDS
    if row.requeued_for != row.state and row.host.state == HostState.UP:
        row.requeued_for = row.state
        row.save(update_fields=["requeued_for", "updated_at"])  # the deadline starts again
        record_event(
            row,
            from_state=row.state,
            to_state=row.state,
            actor_label=ACTOR_LABEL,
            reason=f"re-queued by the reaper: host {row.host.name} did not report the {action} "
            f"within {seconds} s",
        )
        enqueue_certificate_task(action, row.host, row.certificate)
        return "requeued"
    before = row.state
    again = " after one re-queue" if row.requeued_for == row.state else ""
    reason = (
        f"{action} not reported by host {row.host.name} ({row.host.get_state_display()}) "
        f"within {seconds} s{again}; its agent's sync retries it when it starts"
    )
    row.mark_failed()
    row.error_text = reason
    row.requeued_for = ""
    row.save(update_fields=["state", "error_text", "requeued_for", "updated_at"])
    record_event(row, from_state=before, to_state=row.state, actor_label=ACTOR_LABEL, reason=reason)
    return "failed"
