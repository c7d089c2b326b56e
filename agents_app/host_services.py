"""Operator actions on KVM hosts (maintenance on and off) and beat's heartbeat check.

A host in MAINTENANCE gets no new deploys or pool copies (both pick Up hosts only) and its
heartbeats no longer bring it Up; leaving maintenance makes it DISCONNECTED until the agent's
next heartbeat.
"""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from django_fsm import can_proceed

from templates_app.errors import TransitionConflict
from templates_app.events import record_event

from .agent.tasks import vm_deploy_task
from .choices import HostState, VmState
from .models import Host, VirtualMachine


def _lock_host(host_id: int) -> Host:
    return Host.objects.select_for_update().get(pk=host_id)


def _transition(host_id: int, action: str, *, actor, reason: str) -> Host:
    host = _lock_host(host_id)
    method = getattr(host, action)
    if not can_proceed(method):
        raise TransitionConflict(host, action.replace("_", " "))
    before = host.state
    method()
    host.save(update_fields=["state", "updated_at"])
    record_event(host, from_state=before, to_state=host.state, actor=actor, reason=reason)
    return host


@transaction.atomic
def host_enter_maintenance(*, host_id: int, actor) -> Host:
    """Take a host out of service (from Up, Down or Disconnected); 409 when already in it."""
    return _transition(host_id, "enter_maintenance", actor=actor, reason="maintenance on")


@transaction.atomic
def host_leave_maintenance(*, host_id: int, actor) -> Host:
    """Put a host back in service: DISCONNECTED until its agent's next heartbeat."""
    return _transition(host_id, "leave_maintenance", actor=actor, reason="maintenance off")


def hosts_mark_down(*, missed_after_seconds: int) -> int:
    """Beat: hosts whose last heartbeat is older than the limit go Down."""
    limit = timezone.now() - timedelta(seconds=missed_after_seconds)
    stale = Host.objects.filter(state=HostState.UP, last_heartbeat_at__lt=limit)
    count = 0
    for host_id in stale.values_list("pk", flat=True):
        with transaction.atomic():
            host = Host.objects.select_for_update().get(pk=host_id)
            if host.state == HostState.UP and host.last_heartbeat_at < limit:
                host.miss_heartbeats()
                host.save()
                record_event(
                    host,
                    from_state=HostState.UP,
                    to_state=host.state,
                    actor_label="heartbeat-check",
                    reason="missed heartbeats",
                )
                count += 1
        _release_deploys_of(host_id)
    return count


def _release_deploys_of(host_id: int) -> None:
    """A host went Down while it owned deploys: each moves to another Up host of its pool (its
    claim dropped, so the silent host's late result cannot win), or ends in ERROR naming the
    host. One transaction per VM; nothing stays STARTING on a host nobody hears from."""
    starting = VirtualMachine.objects.filter(host_id=host_id, state=VmState.STARTING)
    for vm_id in list(starting.values_list("pk", flat=True)):
        with transaction.atomic():
            _release_deploy(vm_id, host_id)


def _release_deploy(vm_id: int, host_id: int) -> None:
    vm = (
        VirtualMachine.objects.select_for_update(of=("self",))
        .select_related("host", "pool")
        .get(pk=vm_id)
    )
    if vm.state != VmState.STARTING or vm.host_id != host_id:
        return
    gone = vm.host.name
    other = None
    if vm.pool_id is not None:
        other = vm.pool.hosts.filter(state=HostState.UP).exclude(pk=host_id).order_by("?").first()
    vm.host_task_token, vm.host_task_name, vm.host_task_expires_at = "", "", None
    if other is None:
        vm.fail_deploy()
        vm.error_text = f"host {gone} went Down (missed heartbeats) during the deploy"
        vm.save()
        record_event(
            vm,
            from_state=VmState.STARTING,
            to_state=vm.state,
            actor_label="heartbeat-check",
            reason=vm.error_text,
        )
        return
    vm.host = other
    vm.deploy_hosts_tried = [*vm.deploy_hosts_tried, host_id]
    vm.error_text = ""
    vm.save()
    record_event(
        vm,
        from_state=vm.state,
        to_state=vm.state,
        actor_label="heartbeat-check",
        reason=f"host {gone} went Down during the deploy; retrying on {other.name}",
    )
    queue, pk = other.queue, vm.pk
    transaction.on_commit(lambda: vm_deploy_task.apply_async(kwargs={"vm_id": pk}, queue=queue))
