"""deployVirtualMachine and the VM power commands: thin callers of agents_app.services (the
same calls POST /api/v1/vms/ and its actions make). Jobs resolve from the VM's state: a deploy
is pending while STARTING, done when RUNNING (or STOPPED for startvm=false), failed in ERROR;
power actions move the row at once (the host follows), so their jobs are done when asked."""

import uuid as uuid_lib

from django.db.models import OuterRef, Q, Subquery

from templates_app import selectors as catalogue
from templates_app.cloudstack.jobs import AsyncStart, JobOutcome, register_resolver
from templates_app.cloudstack.registry import LIST_PARAMS, Call, Command, Param, register
from templates_app.cloudstack.responses import cs_date, list_response, paged
from templates_app.models import TemplateStoreRef

from .. import selectors, services
from ..choices import VmState
from ..models import VirtualMachine
from .offerings import OFFERINGS, offering_by_id, offering_of

CS_STATE = {
    VmState.STARTING: "Starting",
    VmState.RUNNING: "Running",
    VmState.STOPPED: "Stopped",
    VmState.ERROR: "Error",
    VmState.DESTROYED: "Destroyed",
    VmState.EXPUNGED: "Expunging",
}
STATE_OF_CS = {name.lower(): state for state, name in CS_STATE.items()}
FIELDS = {"zone": "zoneid", "template": "templateid", "name": "name"}
NIC_NAMESPACE = uuid_lib.UUID("5b0c2f9e-3d41-4f7a-9c8e-2a6d1e4b7f03")


def _nic(vm: VirtualMachine) -> dict:
    """Stencil has no guest networking, but every CloudStack VM has a default NIC and clients
    index it (Terraform's provider reads `nic[0].ipaddress` after a deploy and panics on an
    empty list): one NIC without network or address. libcloud skips a NIC without address."""
    return {"id": str(uuid_lib.uuid5(NIC_NAMESPACE, str(vm.uuid))), "isdefault": True}


def vm_row(vm: VirtualMachine, *, is_staff: bool) -> dict:
    """CloudStack's UserVmResponse; the host is infrastructure, for staff only."""
    offering = offering_of(vm.vcpus, vm.memory_mib)
    row = {
        "id": str(vm.uuid),
        "name": vm.name,
        "displayname": vm.name,
        "account": vm.account.name,
        "accountid": str(vm.account.uuid),
        "domain": "ROOT",
        "state": CS_STATE[vm.state],
        "zoneid": str(vm.zone.uuid),
        "zonename": vm.zone.name,
        "templateid": str(vm.template.uuid),
        "templatename": vm.template.name,
        "templatedisplaytext": vm.template.display_text,
        "serviceofferingid": offering.id if offering else None,
        "serviceofferingname": offering.name if offering else None,
        "cpunumber": vm.vcpus,
        "memory": vm.memory_mib,
        "hypervisor": vm.template.hypervisor,
        "created": cs_date(vm.created_at),
        "haenable": False,
        "passwordenabled": False,
        "isdynamicallyscalable": False,
        "nic": [_nic(vm)],
        "securitygroup": [],
        "affinitygroup": [],
        "tags": [],
    }
    if is_staff and vm.host is not None:
        row["hostid"], row["hostname"] = str(vm.host.uuid), vm.host.name
    if vm.state == VmState.ERROR and vm.error_text:
        row["details"] = {"error": vm.error_text}
    return row


def _visible_vm(call: Call, vm_id) -> VirtualMachine:
    """The caller's VM (staff: any), not expunged; anything else is an unknown id."""
    vm = (
        selectors.vms_visible_to(call.user)
        .exclude(state=VmState.EXPUNGED)
        .filter(uuid=vm_id)
        .first()
    )
    if vm is None:
        raise call.invalid("id", vm_id)
    return vm


def _answer(vm: VirtualMachine, user) -> dict:
    fresh = selectors.vms_visible_to(user).get(pk=vm.pk)
    return {"virtualmachine": vm_row(fresh, is_staff=user.is_staff)}


def deploy_virtual_machine(
    call: Call,
    serviceofferingid,
    templateid,
    zoneid,
    name=None,
    displayname=None,
    startvm=True,
) -> AsyncStart:
    offering = offering_by_id(serviceofferingid)
    if offering is None:
        raise call.invalid("serviceofferingid", serviceofferingid)
    # Another account's private template is unknown, exactly like a wrong id (as POST /vms/).
    template = catalogue.templates_visible_to(call.user).filter(uuid=templateid).first()
    if template is None:
        raise call.invalid("templateid", templateid)
    zone = catalogue.zones_list().filter(uuid=zoneid).first()
    if zone is None:
        raise call.invalid("zoneid", zoneid)
    create = services.vm_deploy if startvm else services.vm_create
    vm = create(
        name=name or displayname or f"VM-{uuid_lib.uuid4()}",
        template_id=template.pk,
        zone=zone,
        account=call.account,
        actor=call.user,
        memory_mib=offering.memory_mib,
        vcpus=offering.vcpus,
    )
    return AsyncStart(vm, "VirtualMachine")


def deployed(job, vm: VirtualMachine) -> JobOutcome | None:
    if vm.state == VmState.STARTING:
        return None
    if vm.state in (VmState.RUNNING, VmState.STOPPED):
        return JobOutcome.success(_answer(vm, job.user))
    return JobOutcome.failure(vm.error_text or f"the VM is {CS_STATE[vm.state]}")


def moved(job, vm: VirtualMachine) -> JobOutcome:
    return JobOutcome.success(_answer(vm, job.user))


def expunged(job, vm: VirtualMachine) -> JobOutcome:
    return JobOutcome.success({"success": True})


def start_virtual_machine(call: Call, id) -> AsyncStart:
    vm = services.vm_start(vm_id=_visible_vm(call, id).pk, actor=call.user)
    return AsyncStart(vm, "VirtualMachine")


def stop_virtual_machine(call: Call, id, forced=None) -> AsyncStart:
    vm = services.vm_stop(vm_id=_visible_vm(call, id).pk, actor=call.user)
    return AsyncStart(vm, "VirtualMachine")


def reboot_virtual_machine(call: Call, id) -> AsyncStart:
    vm = services.vm_reboot(vm_id=_visible_vm(call, id).pk, actor=call.user)
    return AsyncStart(vm, "VirtualMachine")


def destroy_virtual_machine(call: Call, id, expunge=False) -> AsyncStart:
    vm = services.vm_destroy(vm_id=_visible_vm(call, id).pk, actor=call.user, expunge=expunge)
    return AsyncStart(vm, "VirtualMachine")


def expunge_virtual_machine(call: Call, id) -> AsyncStart:
    vm = services.vm_expunge(vm_id=_visible_vm(call, id).pk, actor=call.user)
    return AsyncStart(vm, "VirtualMachine")


def recover_virtual_machine(call: Call, id) -> dict:
    vm = services.vm_recover(vm_id=_visible_vm(call, id).pk, actor=call.user)
    return _answer(vm, call.user)


def list_virtual_machines(call: Call, **params) -> dict:
    vms = selectors.vms_visible_to(call.user).exclude(state=VmState.EXPUNGED)
    ids = [params["id"]] if params.get("id") else params.get("ids") or []
    if ids:
        vms = vms.filter(uuid__in=ids)
    if params.get("name"):
        vms = vms.filter(name=params["name"])
    if params.get("keyword"):
        vms = vms.filter(Q(name__icontains=params["keyword"]))
    if params.get("state"):
        state = STATE_OF_CS.get(params["state"].lower())
        if state is None:
            raise call.invalid("state", params["state"])
        vms = vms.filter(state=state)
    if params.get("zoneid"):
        vms = vms.filter(zone__uuid=params["zoneid"])
    if params.get("templateid"):
        vms = vms.filter(template__uuid=params["templateid"])
    count = vms.count()
    rows = [
        vm_row(vm, is_staff=call.user.is_staff)
        for vm in paged(vms, params.get("page"), params.get("pagesize"))
    ]
    return list_response("virtualmachine", rows, count=count)


def list_service_offerings(call: Call, id=None, name=None, keyword=None, page=None, pagesize=None):
    rows = [
        {
            "id": offering.id,
            "name": offering.name,
            "displaytext": offering.display_text,
            "cpunumber": offering.vcpus,
            "cpuspeed": 0,
            "memory": offering.memory_mib,
            "storagetype": "shared",
            "offerha": False,
            "limitcpuuse": False,
            "iscustomized": False,
            "issystem": False,
            "isvolatile": False,
        }
        for offering in OFFERINGS
        if (id is None or offering.id == str(id))
        and (name is None or offering.name == name)
        and (not keyword or keyword.lower() in offering.name.lower())
    ]
    return list_response("serviceoffering", paged(rows, page, pagesize), count=len(rows))


def _disk_size(vm: VirtualMachine) -> int:
    """The template's virtual size: from the cached copy the disk is an overlay on, else from
    the template's copy on secondary storage (`image_size`); 0 when no copy knows it yet."""
    if vm.pool_copy is not None and vm.pool_copy.size:
        return vm.pool_copy.size
    return vm.image_size or 0


def volume_row(vm: VirtualMachine, *, is_staff: bool) -> dict:
    """CloudStack's VolumeResponse of a VM's root disk (a VM has exactly one disk here; the
    volume's id is the VM's). Its size is the template's virtual size when the disk is an
    overlay on a cached copy. The pool is infrastructure: for staff only."""
    row = {
        "id": str(vm.uuid),
        "name": f"ROOT-{vm.name}",
        "type": "ROOT",
        "deviceid": 0,
        "virtualmachineid": str(vm.uuid),
        "vmname": vm.name,
        "vmdisplayname": vm.name,
        "vmstate": CS_STATE[vm.state],
        "state": "Destroy" if vm.state == VmState.DESTROYED else "Ready",
        "destroyed": vm.state == VmState.DESTROYED,
        "zoneid": str(vm.zone.uuid),
        "zonename": vm.zone.name,
        "templateid": str(vm.template.uuid),
        "templatename": vm.template.name,
        "account": vm.account.name,
        "domain": "ROOT",
        "hypervisor": vm.template.hypervisor,
        "storagetype": "shared",
        "created": cs_date(vm.created_at),
        "size": _disk_size(vm),
    }
    if is_staff and vm.pool is not None:
        row["storageid"], row["storage"] = str(vm.pool.uuid), vm.pool.name
    return row


def list_volumes(call: Call, **params) -> dict:
    """The root disks of the caller's VMs (libcloud's list_volumes; Terraform's instance reads
    `listVolumes type=ROOT virtualmachineid=`). No data disks: another `type` is empty."""
    if params.get("type") and params["type"].upper() != "ROOT":
        return {}
    image_sizes = TemplateStoreRef.objects.filter(
        template_id=OuterRef("template_id"), size__isnull=False
    ).order_by("-size")
    vms = (
        selectors.vms_visible_to(call.user)
        .select_related("pool_copy")
        .annotate(image_size=Subquery(image_sizes.values("size")[:1]))
        .exclude(state=VmState.EXPUNGED)
    )
    for name in ("id", "virtualmachineid"):
        if params.get(name):
            vms = vms.filter(uuid=params[name])
    if params.get("zoneid"):
        vms = vms.filter(zone__uuid=params["zoneid"])
    if params.get("keyword"):
        vms = vms.filter(name__icontains=params["keyword"])
    count = vms.count()
    rows = [
        volume_row(vm, is_staff=call.user.is_staff)
        for vm in paged(vms, params.get("page"), params.get("pagesize"))
    ]
    return list_response("volume", rows, count=count)


def nothing(call: Call, **params) -> dict:
    """Stencil has no guest networking: the listings libcloud's list_nodes asks for are empty."""
    return {}


ID = Param("id", "uuid", required=True, description="The ID of the virtual machine")


def register_vm_commands() -> None:
    commands = (
        Command(
            "deployVirtualMachine",
            deploy_virtual_machine,
            (
                Param("serviceofferingid", "uuid", required=True, description="The offering"),
                Param("templateid", "uuid", required=True, description="The template"),
                Param("zoneid", "uuid", required=True, description="The zone"),
                Param("name", description="Host name of the VM"),
                Param("displayname", description="Display name of the VM"),
                Param("startvm", "boolean", description="Deploy and start it (default true)"),
            ),
            "Creates and automatically starts a virtual machine",
            is_async=True,
            fields=FIELDS,
        ),
        Command(
            "listVirtualMachines",
            list_virtual_machines,
            (
                Param("id", "uuid", description="The ID of the virtual machine"),
                Param("ids", "list", description="Comma-separated VM IDs"),
                Param("name", description="Name of the virtual machine"),
                Param("state", description="Running, Stopped, ..."),
                Param("zoneid", "uuid", description="The zone"),
                Param("templateid", "uuid", description="The template"),
                *LIST_PARAMS,
            ),
            "List the virtual machines owned by the account",
            entity="virtualmachine",
        ),
        Command("startVirtualMachine", start_virtual_machine, (ID,), "Starts a VM", True),
        Command(
            "stopVirtualMachine",
            stop_virtual_machine,
            (ID, Param("forced", "boolean", description="Ignored")),
            "Stops a virtual machine",
            True,
        ),
        Command("rebootVirtualMachine", reboot_virtual_machine, (ID,), "Reboots a VM", True),
        Command(
            "destroyVirtualMachine",
            destroy_virtual_machine,
            (ID, Param("expunge", "boolean", description="Expunge it at once")),
            "Destroys a virtual machine",
            True,
        ),
        Command("expungeVirtualMachine", expunge_virtual_machine, (ID,), "Expunges a VM", True),
        Command("recoverVirtualMachine", recover_virtual_machine, (ID,), "Recovers a VM"),
        Command(
            "listServiceOfferings",
            list_service_offerings,
            (
                Param("id", "uuid", description="ID of the service offering"),
                Param("name", description="Name of the service offering"),
                *LIST_PARAMS,
            ),
            "Lists all available service offerings",
            entity="serviceoffering",
        ),
        Command(
            "listVolumes",
            list_volumes,
            (
                Param("id", "uuid", description="The ID of the volume"),
                Param("virtualmachineid", "uuid", description="The VM it belongs to"),
                Param("type", description="ROOT (the only type here)"),
                Param("zoneid", "uuid", description="The zone"),
                *LIST_PARAMS,
            ),
            "Lists the root volumes of the account's VMs",
            entity="volume",
        ),
    )
    empty = (
        ("listDiskOfferings", "Lists disk offerings (none: a VM has its root disk only)"),
        ("listNetworks", "Lists all available networks (none: no guest networking)"),
        ("listPublicIpAddresses", "Lists public IP addresses (none)"),
        ("listPortForwardingRules", "Lists port forwarding rules (none)"),
        ("listIpForwardingRules", "Lists IP forwarding rules (none)"),
        # What libcloud's list_key_pairs / ex_list_* and cloudmonkey ask for: none exist here.
        ("listSSHKeyPairs", "Lists SSH key pairs (none: VMs get no keys)"),
        ("listSecurityGroups", "Lists security groups (none)"),
        ("listAffinityGroups", "Lists affinity groups (none)"),
        ("listProjects", "Lists projects (none: no projects)"),
        ("listTags", "Lists resource tags (none: no tags)"),
    )
    for command in commands:
        register(command)
    for name, description in empty:
        register(Command(name, nothing, (), description))
    register_resolver("deployVirtualMachine", deployed)
    for name in ("start", "stop", "reboot", "destroy"):
        register_resolver(f"{name}VirtualMachine", moved)
    register_resolver("expungeVirtualMachine", expunged)
