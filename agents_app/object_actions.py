"""Compute's actions on object pages (templates_app.admin_actions registry): a VM's life cycle,
snapshots and "create a version"; a host's maintenance; a pool copy's pin / unpin / evict; and
"Prepare on pools" on the catalogue's template page. Each calls one service."""

from django import forms

from templates_app.admin_actions import register_action, service_action
from templates_app.choices import TemplateState
from templates_app.models import Template, Zone

from . import host_services, pool_copies, services
from .choices import HostState, PoolCopyState, VmState
from .followers import vm_version_create
from .impacts import pool_copy_evict_impact, vm_destroy_impact
from .models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine

# VMs -------------------------------------------------------------------------------------


def _vm(service):
    return lambda *, obj, actor, **data: service(vm_id=obj.pk, actor=actor, **data)


def _in(*states: str):
    return lambda obj: obj.state in states


class DestroyForm(forms.Form):
    expunge = forms.BooleanField(
        required=False, help_text="Also expunge: the host deletes the disk; not recoverable."
    )
    delete_snapshot_metadata = forms.BooleanField(
        required=False,
        help_text="Needed when the VM has snapshots (their data in the disk volume is kept).",
    )


class ExpungeForm(forms.Form):
    delete_snapshot_metadata = forms.BooleanField(
        required=False,
        help_text="Needed when the VM has snapshots (their data in the disk volume is kept).",
    )


class SnapshotForm(forms.Form):
    name = forms.CharField(max_length=128)
    description = forms.CharField(max_length=1024, required=False)


def revert_form(vm: VirtualMachine) -> type[forms.Form]:
    names = list(vm.snapshots.order_by("-created_at").values_list("name", flat=True))

    class RevertForm(forms.Form):
        name = forms.ChoiceField(label="Snapshot", choices=[(n, n) for n in names])

    return RevertForm


class VersionForm(forms.Form):
    version_name = forms.CharField(
        max_length=128, required=False, help_text="Defaults to “from <VM name>”."
    )


def _version(*, obj: VirtualMachine, actor, version_name: str) -> Template:
    return vm_version_create(vm_id=obj.pk, actor=actor, version_name=version_name)


ON_HOST = (VmState.RUNNING, VmState.STOPPED)
VM_ACTIONS = [
    service_action("start", "Start", _vm(services.vm_start), shown=_in(VmState.STOPPED), order=10),
    service_action(
        "stop",
        "Stop",
        _vm(services.vm_stop),
        shown=_in(VmState.RUNNING, VmState.STARTING),
        order=11,
    ),
    service_action(
        "reboot", "Reboot", _vm(services.vm_reboot), shown=_in(VmState.RUNNING), order=12
    ),
    service_action(
        "recover", "Recover", _vm(services.vm_recover), shown=_in(VmState.DESTROYED), order=13
    ),
    service_action(
        "snapshot",
        "Take snapshot",
        _vm(services.vm_snapshot_create),
        shown=lambda vm: vm.host_id is not None and vm.state in ON_HOST,
        form=lambda vm: SnapshotForm,
        done="Snapshot asked of the VM's host: it appears on “{obj}” once libvirt has it.",
        order=20,
    ),
    service_action(
        "revert",
        "Revert to snapshot",
        _vm(services.vm_snapshot_revert),
        shown=lambda vm: vm.state in ON_HOST and vm.snapshots.exists(),
        form=revert_form,
        done="Revert of “{obj}” asked of its host.",
        order=21,
    ),
    service_action(
        "create-version",
        "Create version",
        _version,
        shown=lambda vm: vm.host_id is not None and vm.state == VmState.STOPPED,
        form=lambda vm: VersionForm,
        done="Version {result.version_number} of “{result}” is being made from “{obj}”'s disk.",
        help_text="The VM's host flattens its stopped root disk into an image store.",
        order=30,
    ),
    service_action(
        "destroy",
        "Destroy",
        _vm(services.vm_destroy),
        shown=_in(*[s for s in VmState.values if s not in (VmState.DESTROYED, VmState.EXPUNGED)]),
        form=lambda vm: DestroyForm,
        impact=vm_destroy_impact,
        done="VM “{obj}” is now {result.state}.",
        order=90,
    ),
    service_action(
        "expunge",
        "Expunge",
        lambda *, obj, actor, **data: services.vm_expunge(vm_id=obj.pk, actor=actor, **data),
        shown=_in(VmState.DESTROYED),
        form=lambda vm: ExpungeForm,
        impact=lambda vm, data: vm_destroy_impact(vm, {**data, "expunge": True}),
        done="VM “{obj}” is now {result.state}.",
        order=91,
    ),
]

# Hosts -----------------------------------------------------------------------------------


def _host(service):
    return lambda *, obj, actor: service(host_id=obj.pk, actor=actor)


HOST_ACTIONS = [
    service_action(
        "enter-maintenance",
        "Enter maintenance",
        _host(host_services.host_enter_maintenance),
        shown=lambda host: host.state != HostState.MAINTENANCE,
        done="Host “{obj}” is now in maintenance: no new work is sent to it.",
    ),
    service_action(
        "leave-maintenance",
        "Leave maintenance",
        _host(host_services.host_leave_maintenance),
        shown=lambda host: host.state == HostState.MAINTENANCE,
        done="Host “{obj}” left maintenance; it is Up again at its next heartbeat.",
    ),
]

# Pool copies -----------------------------------------------------------------------------


def _pin(pinned: bool):
    def call(*, obj: TemplatePoolRef, actor):
        if pinned:
            return pool_copies.template_prepare(
                template_id=obj.template_id, pool_ids=[obj.pool_id], actor=actor
            )
        return pool_copies.pool_copy_set_pinned(
            template_id=obj.template_id, pool_id=obj.pool_id, pinned=False, actor=actor
        )

    return call


POOL_COPY_ACTIONS = [
    service_action(
        "pin",
        "Pin",
        _pin(True),
        shown=lambda ref: not ref.pinned and ref.state != PoolCopyState.EVICTING,
        done="Copy “{obj}” is pinned (a live reference) and made on the pool now.",
        help_text="Pre-populate: the copy stays, and keeps its template, until unpinned.",
    ),
    service_action(
        "unpin",
        "Unpin",
        _pin(False),
        shown=lambda ref: ref.pinned,
        done="Copy “{obj}” is unpinned; the sweep may evict it once unused.",
    ),
    service_action(
        "evict",
        "Evict",
        lambda *, obj, actor: pool_copies.pool_copy_evict(ref_id=obj.pk, actor=actor),
        shown=lambda ref: ref.state in (PoolCopyState.DOWNLOADED, PoolCopyState.DOWNLOAD_ERROR),
        impact=pool_copy_evict_impact,
        done="Copy “{obj}” is EVICTING: its volume is deleted by a host of the pool.",
        order=90,
    ),
]

# "Prepare on pools" on a template's page -------------------------------------------------


def prepare_form(template: Template) -> type[forms.Form]:
    zone_ids = template.zones.values("pk")

    class PrepareForm(forms.Form):
        pools = forms.ModelMultipleChoiceField(
            queryset=PrimaryPool.objects.filter(zone__in=zone_ids).order_by("name"),
            required=False,
            help_text="Pin a copy on these pools…",
        )
        zone = forms.ModelChoiceField(
            queryset=Zone.objects.filter(pk__in=zone_ids).order_by("name"),
            required=False,
            help_text="…or on every pool of this zone.",
        )

        def clean(self):
            data = super().clean()
            if not data.get("pools") and not data.get("zone"):
                self.add_error("pools", "Choose pools or a zone.")
            return data

    return PrepareForm


def _prepare(*, obj: Template, actor, pools, zone) -> int:
    kwargs = {"pool_ids": [p.pk for p in pools]} if pools else {"zone_id": zone.pk}
    return len(pool_copies.template_prepare(template_id=obj.pk, actor=actor, **kwargs))


def register_object_actions() -> None:
    for action in VM_ACTIONS:
        register_action(VirtualMachine, action)
    for action in HOST_ACTIONS:
        register_action(Host, action)
    for action in POOL_COPY_ACTIONS:
        register_action(TemplatePoolRef, action)
    register_action(
        Template,
        service_action(
            "prepare",
            "Prepare on pools",
            _prepare,
            shown=lambda t: t.state == TemplateState.ACTIVE,
            form=prepare_form,
            done="“{obj}” is pinned on {result} pool(s); their hosts copy it now.",
            help_text="Pre-populate primary storage: pinned copies are live references.",
            order=30,
        ),
    )
