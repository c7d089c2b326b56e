"""The agent's side of a host's life: it announces itself on start and heartbeats while it runs
(`manage.py run_agent`); it also reports its pools' sizes as libvirt sees them, and reconciles
its VMs' recorded states with their domains (`vms_reconcile`, one listAllDomains a beat)."""

from django.db import transaction
from django.utils import timezone

from templates_app.events import record_event
from templates_app.models import Zone

from ..choices import HostState, VmState
from ..models import Host, PrimaryPool, VirtualMachine
from . import virt
from .reconcile import vms_reconcile
from .tasks import vm_deploy_task

__all__ = ["host_heartbeat", "host_register", "pools_report", "vms_reconcile"]


@transaction.atomic
def host_register(
    *, name: str, zone: Zone, libvirt_uri: str, address: str = "", capabilities: dict | None = None
) -> Host:
    """An agent announces itself (on start): create or update its host and mark it Up."""
    host, _ = Host.objects.select_for_update().get_or_create(
        name=name, defaults={"zone": zone, "libvirt_uri": libvirt_uri}
    )
    host.zone, host.libvirt_uri, host.address = zone, libvirt_uri, address
    host.capabilities = capabilities or {}
    return _heartbeat(host, reason="agent started")


def _heartbeat(host: Host, *, reason: str) -> Host:
    before = host.state
    if host.state != HostState.MAINTENANCE:
        host.connect()
    host.last_heartbeat_at = timezone.now()
    host.save()
    if before != host.state:
        record_event(
            host, from_state=before, to_state=host.state, actor_label="agent", reason=reason
        )
    return host


@transaction.atomic
def host_heartbeat(*, name: str) -> Host:
    """The agent is alive."""
    return _heartbeat(Host.objects.select_for_update().get(name=name), reason="heartbeat")


def pools_report(*, host_name: str) -> int:
    """Agent: record each pool's capacity and usage as libvirt sees them (with the heartbeat)."""
    host = Host.objects.get(name=host_name)
    conn = virt.connection(host.libvirt_uri)
    updated = 0
    for pool in host.pools.all():
        try:
            info = virt.pool_info(conn, pool.libvirt_pool_name)
        except virt.VirtError:
            continue
        updated += PrimaryPool.objects.filter(pk=pool.pk).update(
            capacity_bytes=info.capacity, used_bytes=info.allocation
        )
    return updated


def deploys_resume(*, host_name: str) -> int:
    """On agent start: the deploys this host was running when its agent died are sent again to
    its own queue (the broker would hold their unacknowledged messages until its visibility
    timeout). Their host-task claims are dropped first: this agent has not run a task yet, so
    any claim on its VMs belongs to its dead predecessor. A deploy waiting on a pool copy is
    left to that copy; a repeat delivery is harmless (the claim and the STARTING check)."""
    host = Host.objects.get(name=host_name)
    unfinished = VirtualMachine.objects.filter(
        host=host, state=VmState.STARTING, awaited_copy__isnull=True
    )
    vm_ids = list(unfinished.values_list("pk", flat=True))
    unfinished.filter(pk__in=vm_ids).update(
        host_task_token="", host_task_name="", host_task_expires_at=None
    )
    for vm_id in vm_ids:
        vm_deploy_task.apply_async(kwargs={"vm_id": vm_id}, queue=host.queue)
    return len(vm_ids)
