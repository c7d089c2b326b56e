"""The agent's side of a host's life: it announces itself on start and heartbeats while it runs
(`manage.py run_agent`); it also reports its pools' sizes as libvirt sees them, and reconciles
its VMs' recorded states with their domains (`vms_reconcile`, one listAllDomains a beat)."""

from django.db import transaction
from django.utils import timezone

from templates_app.events import record_event
from templates_app.models import Zone

from ..choices import HostState
from ..models import Host, PrimaryPool
from . import virt
from .reconcile import vms_reconcile

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
