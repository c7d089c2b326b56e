"""Compute's side of lineages: VMs and VM pools that follow a channel ('latest', 'stable',
'canary', ...), and versions made from a VM's disk.

A channel that moves (versions_app.signals.channel_moved), or a new version that becomes usable
for 'latest' (version_usable), moves the STOPPED stateless followers of that channel onto its
version at once; running ones move when they next stop (agents_app.services.vm_stop). A version
from a VM is numbered by versions_app like any other; the VM's host writes its bytes.
"""

from django.db import transaction

from templates_app.errors import TransitionConflict
from templates_app.models import Template
from versions_app.channel_followers import Follower
from versions_app.selectors import lineage_of, lineage_root_id
from versions_app.services import template_version_for_bytes

from .agent.tasks import vm_disk_to_store_task
from .choices import LATEST_CHANNEL, VmState
from .models import VirtualMachine, VmPool
from .services import vm_rebuild_onto_followed

# A follower that is not EXPUNGED or DESTROYED still runs (or will run) the channel's version.
_GONE_STATES = (VmState.DESTROYED, VmState.EXPUNGED)


def _followers_of(lineage_id: int, channel: str):
    return VirtualMachine.objects.filter(
        stateless=True,
        follow_channel=channel,
        template__in=lineage_of(lineage_id).values("pk"),
    )


def rebuild_channel_followers(*, base_template_id: int, channel: str = LATEST_CHANNEL) -> int:
    """Every STOPPED stateless VM of the lineage that follows `channel` is moved onto the
    channel's version, and its host rebuilds its root disk (id, uuid, name, zone, account and
    stateless flag stay). One transaction per VM; returns how many moved."""
    root_id = lineage_root_id(base_template_id)
    if root_id is None:
        return 0
    followers = _followers_of(root_id, channel).filter(state=VmState.STOPPED)
    vm_ids = list(followers.values_list("pk", flat=True))
    return sum(vm_rebuild_onto_followed(vm_id=vm_id) for vm_id in vm_ids)


def rebuild_latest_followers(*, base_template_id: int) -> int:
    """The followers of 'latest' (a new version became usable)."""
    return rebuild_channel_followers(base_template_id=base_template_id, channel=LATEST_CHANNEL)


def channel_followers(lineage_id: int, channel: str) -> list[Follower]:
    """Registered with versions_app.channel_followers: the VMs and VM pools that follow
    `channel` of the lineage (a promote checks their zones; the admin lists them)."""
    vms = (
        _followers_of(lineage_id, channel)
        .exclude(state__in=_GONE_STATES)
        .select_related("zone")
        .order_by("pk")
    )
    pools = (
        VmPool.objects.filter(
            follow_channel=channel, template__in=lineage_of(lineage_id).values("pk")
        )
        .select_related("zone")
        .order_by("pk")
    )
    rows = [
        Follower(
            kind="vm",
            id=vm.uuid,
            name=vm.name,
            account_id=vm.account_id,
            zone_id=vm.zone_id,
            zone=vm.zone.name,
            state=vm.state,
            moves_now=vm.state == VmState.STOPPED,
        )
        for vm in vms
    ]
    rows += [
        Follower(
            kind="vm_pool",
            id=pool.uuid,
            name=pool.name,
            account_id=pool.account_id,
            zone_id=pool.zone_id,
            zone=pool.zone.name,
            state="FOLLOWS",
            moves_now=False,
        )
        for pool in pools
    ]
    return rows


@transaction.atomic
def vm_version_create(*, vm_id: int, actor, version_name: str = "") -> Template:
    """oVirt's "create a version from a VM": the VM's host flattens its root disk
    (`qemu-img convert -f qcow2 -O qcow2`) into an image store as the new version's bytes.

    The VM must be on a host and STOPPED, so the disk is consistent. Lock order: the base (in
    versions_app), then the VM. The version becomes deployable when its copy is READY.
    """
    vm = VirtualMachine.objects.select_related("template").get(pk=vm_id)
    version, ref = template_version_for_bytes(
        base_template_id=vm.template.lineage_id,
        actor=actor,
        zone=vm.zone,
        version_name=version_name or f"from {vm.name}",
    )
    vm = VirtualMachine.objects.select_for_update(of=("self",)).select_related("host").get(pk=vm_id)
    if vm.host_id is None or vm.state != VmState.STOPPED:
        raise TransitionConflict(vm, "create a version from", reason="stop the VM on its host")
    queue, payload = vm.host.queue, {"vm_id": vm.pk, "ref_id": ref.pk}
    transaction.on_commit(lambda: vm_disk_to_store_task.apply_async(kwargs=payload, queue=queue))
    return version
