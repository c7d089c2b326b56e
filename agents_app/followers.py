"""Compute's side of lineages: VMs that follow 'latest', and versions made from a VM's disk.

A new version that becomes usable (versions_app.signals.version_usable) moves the STOPPED
stateless followers of its lineage onto it at once; running ones move when they next stop
(agents_app.services.vm_stop). A version from a VM is numbered by versions_app like any other;
the VM's host writes its bytes.
"""

from django.db import transaction

from templates_app.errors import TransitionConflict
from templates_app.models import Template
from versions_app.selectors import lineage_of, lineage_root_id
from versions_app.services import template_version_for_bytes

from .agent.tasks import vm_disk_to_store_task
from .choices import VmState
from .models import VirtualMachine
from .services import vm_rebuild_onto_latest


def rebuild_latest_followers(*, base_template_id: int) -> int:
    """Every STOPPED stateless VM of the lineage that follows 'latest' is moved onto the newest
    ACTIVE version, and its host rebuilds its root disk (id, uuid, name, zone, account and
    stateless flag stay). One transaction per VM; returns how many moved."""
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
