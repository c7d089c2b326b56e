"""What compute's destructive actions affect, for their confirmation pages (selectors only):
destroying or expunging a VM, evicting a pool copy. Pool copies also count in the bytes a
template's removal frees (registered with templates_app.impacts in AgentsAppConfig.ready())."""

from django.template.defaultfilters import filesizeformat

from templates_app.choices import TemplateState
from templates_app.impacts import Impact, removal_time
from templates_app.references import reference_rows

from .choices import HostState, VmState
from .models import TemplatePoolRef, VirtualMachine


def pool_copy_rows(template_ids: list[int]) -> list[dict]:
    copies = (
        TemplatePoolRef.objects.filter(template_id__in=template_ids)
        .select_related("template", "pool")
        .order_by("pk")
    )
    return [
        {
            "kind": "pool copy",
            "name": f"{ref.template} on {ref.pool.name}",
            "bytes": ref.physical_size or 0,
        }
        for ref in copies
    ]


def vm_destroy_impact(vm: VirtualMachine, data: dict) -> Impact:
    """Destroy (recoverable) or destroy and expunge: the VM, its snapshots' metadata, its disk,
    and whether its template loses its last reference."""
    expunge = data.get("expunge", False)
    change = (
        "→ EXPUNGED (disk deleted, not recoverable)" if expunge else "→ DESTROYED (recoverable)"
    )
    affected = [
        {
            "kind": "vm",
            "name": vm.name,
            "state": f"{vm.state} {change}",
            "detail": vm.root_disk_path,
        }
    ]
    snapshots = list(vm.snapshots.order_by("name").values_list("name", flat=True))
    affected += [
        {
            "kind": "snapshot",
            "name": name,
            "state": "metadata deleted" if data.get("delete_snapshot_metadata") else "kept",
            "detail": "",
        }
        for name in snapshots
    ]
    template = vm.template
    others = [row for row in reference_rows(template) if not _is_this_vm(row, vm)]
    notes = []
    if snapshots and not data.get("delete_snapshot_metadata"):
        notes.append("The VM has snapshots: tick “delete snapshot metadata” or it is refused.")
    if not expunge:
        notes.append("A destroyed VM still references its template until it is expunged.")
    when = "The host stops the domain at once."
    if expunge and template.state == TemplateState.INACTIVE:
        when += f" Template “{template}” is INACTIVE: {removal_time(len(others))}"
    return Impact(
        summary=f"{'Destroy and expunge' if expunge else 'Destroy'} VM “{vm}” on "
        f"{vm.host or 'no host'}.",
        affected=affected,
        references=others,
        bytes_freed=0,
        when=when,
        notes=notes,
    )


def _is_this_vm(row: dict, vm: VirtualMachine) -> bool:
    return row.get("kind") == "vm" and row.get("id") == vm.uuid


def pool_copy_evict_impact(ref: TemplatePoolRef, data: dict | None = None) -> Impact:
    """Evicting one pool copy: its volume is deleted; the next deploy on the pool copies again."""
    vms = list(
        VirtualMachine.objects.filter(template_id=ref.template_id, pool_id=ref.pool_id)
        .exclude(state=VmState.EXPUNGED)
        .values_list("name", flat=True)
    )
    host = ref.pool.hosts.filter(state=HostState.UP).order_by("name").first()
    notes = []
    if ref.pinned:
        notes.append("The copy is pinned: unpin it first, or the eviction is refused.")
    if vms:
        notes.append(f"VM disks are on it ({', '.join(vms)}): the eviction is refused.")
    return Impact(
        summary=f"Evict the copy of “{ref.template}” from pool “{ref.pool}”.",
        affected=[
            {
                "kind": "pool copy",
                "name": f"{ref.template} on {ref.pool.name}",
                "state": f"{ref.state} → EVICTING → deleted",
                "detail": ref.install_path or ref.volume_name,
            }
        ],
        bytes_freed=ref.physical_size or 0,
        when=(
            f"Host {host} deletes the volume at once."
            if host
            else "No Up host reaches the pool: the GC sweep has it deleted once one is Up."
        ),
        notes=notes + [f"Physical size {filesizeformat(ref.physical_size or 0)}."],
    )
