"""The database tells the truth about VMs: their recorded state follows what libvirt reports.

`vm_domain_observed` corrects one VM from its domain's observed state (a failed start or stop,
the heartbeat's reconcile); `vms_reconcile` does it for every VM of a host from one
listAllDomains, and reports the running domains that no VM knows (`Host.unknown_domains`).
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from templates_app.events import record_event

from ..choices import VmState
from ..models import Host, VirtualMachine
from . import virt
from .claims import live_claim_q

logger = logging.getLogger(__name__)

# Domain states in which the guest is up (as far as Stencil is concerned).
UP = {"running", "blocked", "paused", "pmsuspended", "nostate"}
CHECKED = [VmState.RUNNING, VmState.STOPPED]


def domain_name(vm: VirtualMachine) -> str:
    return f"vm-{vm.uuid}"


def _truth(vm: VirtualMachine, observed: str) -> str | None:
    """The transition that makes the VM's record match its domain, or None when it does."""
    if vm.state not in CHECKED:
        return None
    if observed == "missing":
        return "mark_error"
    up = observed in UP
    if vm.state == VmState.RUNNING and not up:
        return "stop"
    if vm.state == VmState.STOPPED and up:
        return "start"
    return None


def _story(vm: VirtualMachine, observed: str, name: str) -> str:
    if observed == "missing":
        return f"domain {name} is gone from host {vm.host}"
    return f"domain {name} is {observed} on host {vm.host}"


@transaction.atomic
def vm_domain_observed(
    vm_id: int,
    observed: str,
    *,
    expected_state: str | None = None,
    reason: str = "",
    actor_label: str = "agent",
    unchanged_since=None,
) -> VirtualMachine | None:
    """Correct the VM's state from its domain's `observed` state, under the VM's lock: a gone
    domain makes it ERROR, a shut-off one STOPPED, a running one RUNNING (never the other way
    round). `expected_state` / `unchanged_since`: only when the row still is what the caller saw
    (nobody changed it meanwhile). Returns the VM when it was corrected, else None."""
    vm = VirtualMachine.objects.select_for_update(of=("self",)).select_related("host").get(pk=vm_id)
    if expected_state is not None and vm.state != expected_state:
        return None
    if unchanged_since is not None and vm.updated_at > unchanged_since:
        return None
    action = _truth(vm, observed)
    if action is None:
        return None
    before = vm.state
    getattr(vm, action)()
    story = _story(vm, observed, domain_name(vm))
    vm.error_text = (f"{reason}: {story}" if reason else story)[:4000]
    vm.save(update_fields=["state", "error_text", "updated_at"])
    record_event(vm, from_state=before, to_state=vm.state, actor_label=actor_label, reason=story)
    logger.warning("VM %s: %s -> %s (%s)", vm.pk, before, vm.state, vm.error_text)
    return vm


def domain_states(conn) -> dict[str, str]:
    """Every domain on the connection by name, with its state (one listAllDomains)."""
    return virt.domain_states(conn)


def vms_reconcile(*, host_name: str) -> dict[str, list]:
    """The heartbeat's check of a host: each RUNNING or STOPPED VM of the host whose record
    disagrees with libvirt is corrected (an event per VM), and running domains that no VM knows
    are recorded on the host (reported only, never touched).

    A VM that a host task is working on (a live claim), or that changed within
    STENCIL_VM_RECONCILE_GRACE_SECONDS (its task may still be queued), is left for later.
    """
    host = Host.objects.get(name=host_name)
    observed = domain_states(virt.connection(host.libvirt_uri))
    now = timezone.now()
    settled = now - timedelta(seconds=settings.STENCIL_VM_RECONCILE_GRACE_SECONDS)
    candidates = (
        VirtualMachine.objects.filter(host=host, state__in=CHECKED, updated_at__lte=settled)
        .exclude(live_claim_q(now))
        .only("pk", "uuid", "state")
    )
    corrected = []
    for vm in candidates:
        seen = observed.get(domain_name(vm), "missing")
        if _truth(vm, seen) is None:
            continue
        done = vm_domain_observed(
            vm.pk, seen, expected_state=vm.state, unchanged_since=settled, actor_label="reconciler"
        )
        if done is not None:
            corrected.append(done.pk)
    unknown = _unknown_running(host, observed)
    return {"corrected": corrected, "unknown_domains": unknown}


def _unknown_running(host: Host, observed: dict[str, str]) -> list[str]:
    running = {name for name, state in observed.items() if state in UP}
    if not running:
        known: set[str] = set()
    else:
        uuids = (
            VirtualMachine.objects.exclude(state=VmState.EXPUNGED)
            .filter(uuid__in=[name[3:] for name in running if _looks_like_vm(name)])
            .values_list("uuid", flat=True)
        )
        known = {f"vm-{uuid}" for uuid in uuids}
    unknown = sorted(running - known)
    if unknown != host.unknown_domains:
        Host.objects.filter(pk=host.pk).update(unknown_domains=unknown)
        if unknown:
            logger.warning("host %s runs domains Stencil does not know: %s", host, unknown)
        record_event(
            host,
            from_state=host.state,
            to_state=host.state,
            actor_label="reconciler",
            reason=(
                f"running domains unknown to Stencil: {', '.join(unknown)}"
                if unknown
                else "no unknown running domains any more"
            ),
        )
    return unknown


def _looks_like_vm(name: str) -> bool:
    import uuid

    if not name.startswith("vm-"):
        return False
    try:
        uuid.UUID(name[3:])
    except ValueError:
        return False
    return True
