"""VM life cycle on a host through libvirt, and snapshots with safe undefine (seed 004).

The services answer at once and queue the host's work; here the agent's side is called directly,
as the host's worker would, against the test driver and a real libvirtd.
"""

from pathlib import Path

import pytest

from agents_app import services as vm_services
from agents_app.agent import heartbeat, virt, vms
from agents_app.models import VirtualMachine, VmSnapshot
from tests import libvirt_backends

from .test_deploy import image_server  # noqa: F401  (fixture)

libvirt_backend = libvirt_backends.libvirt_backend

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_vm(libvirt_backend, register, image_server, zone, account, user):  # noqa: F811
    from agents_app.models import PrimaryPool
    from templates_app.copies import store_copy_download
    from templates_app.models import TemplateStoreRef

    url, checksum = image_server
    template = register(url=url, checksum=checksum)
    store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri=libvirt_backend.uri)
    pool = PrimaryPool.objects.create(
        zone=zone,
        name="pool-1",
        libvirt_pool_name=libvirt_backend.pool_name,
        path=str(libvirt_backend.pool_dir),
    )
    pool.hosts.add(host)
    vm = vm_services.vm_deploy(
        name="web", template_id=template.pk, zone=zone, account=account, actor=user, memory_mib=64
    )
    vm = vms.vm_deploy_on_host(vm_id=vm.pk)
    assert vm.state == "RUNNING", vm.error_text
    return vm, virt.connection(libvirt_backend.uri)


def domain_state(vm, conn) -> str:
    return virt.domain_state(conn, vms.domain_name(vm))


def test_stop_start_destroy_recover_expunge(running_vm, user):
    vm, conn = running_vm
    assert domain_state(vm, conn) == "running"

    vm_services.vm_stop(vm_id=vm.pk, actor=user)
    vms.vm_sync_domain(vm_id=vm.pk)
    assert domain_state(vm, conn) == "shutoff"

    vm_services.vm_start(vm_id=vm.pk, actor=user)
    vms.vm_sync_domain(vm_id=vm.pk)
    assert domain_state(vm, conn) == "running"

    vm_services.vm_destroy(vm_id=vm.pk, actor=user)
    vms.vm_sync_domain(vm_id=vm.pk)
    assert domain_state(vm, conn) == "shutoff", "destroyed VMs stay defined: recoverable"
    vm_services.vm_recover(vm_id=vm.pk, actor=user)
    vm_services.vm_destroy(vm_id=vm.pk, actor=user)

    vm_services.vm_expunge(vm_id=vm.pk, actor=user)
    done = vms.vm_sync_domain(vm_id=vm.pk)
    assert done.error_text == ""
    assert domain_state(vm, conn) == "missing"
    assert not Path(vm.root_disk_path).exists(), "expunge deletes the disk"
    assert vms.vm_sync_domain(vm_id=vm.pk).state == "EXPUNGED", "a repeat is harmless"


def test_snapshots_and_safe_undefine(running_vm, user):
    from templates_app.errors import StencilError

    vm, conn = running_vm
    vm_services.vm_stop(vm_id=vm.pk, actor=user)
    vms.vm_sync_domain(vm_id=vm.pk)
    for name in ("before-upgrade", "after-upgrade"):
        vm_services.vm_snapshot_create(vm_id=vm.pk, name=name, actor=user)
        vms.vm_snapshot_on_host(vm_id=vm.pk, action="create", name=name)
    assert list(vm.snapshots.values_list("name", flat=True)) == ["before-upgrade", "after-upgrade"]
    assert sorted(virt.snapshot_list(conn, vms.domain_name(vm))) == [
        "after-upgrade",
        "before-upgrade",
    ]

    vms.vm_snapshot_on_host(vm_id=vm.pk, action="revert", name="before-upgrade")
    vm_services.vm_snapshot_delete(vm_id=vm.pk, name="after-upgrade", actor=user)
    vms.vm_snapshot_on_host(vm_id=vm.pk, action="delete", name="after-upgrade")
    assert virt.snapshot_list(conn, vms.domain_name(vm)) == ["before-upgrade"]

    with pytest.raises(StencilError, match="before-upgrade") as refused:
        vm_services.vm_destroy(vm_id=vm.pk, actor=user, expunge=True)
    assert refused.value.status_code == 409
    assert VirtualMachine.objects.get(pk=vm.pk).state == "STOPPED", "nothing half-done"

    vm_services.vm_destroy(vm_id=vm.pk, actor=user, expunge=True, delete_snapshot_metadata=True)
    done = vms.vm_sync_domain(vm_id=vm.pk, delete_snapshot_metadata=True)
    assert domain_state(vm, conn) == "missing"
    assert not VmSnapshot.objects.filter(vm=vm).exists()
    assert Path(vm.root_disk_path).exists(), "the snapshot data stays in the kept volume"
    assert done.state == "EXPUNGED"


def test_snapshot_api_and_409(api, running_vm, user):
    vm, conn = running_vm
    base = f"/api/v1/vms/{vm.uuid}/"
    api.post(base + "stop/")
    vms.vm_sync_domain(vm_id=vm.pk)
    response = api.post(base + "snapshots/", {"name": "s1"}, format="json")
    assert response.status_code == 202
    vms.vm_snapshot_on_host(vm_id=vm.pk, action="create", name="s1")
    assert [s["name"] for s in api.get(base + "snapshots/").data] == ["s1"]
    assert api.post(base + "snapshots/", {"name": "s1"}, format="json").status_code == 400

    response = api.post(base + "destroy/", {"expunge": True}, format="json")
    assert response.status_code == 409
    assert "s1" in response.data["detail"]
    response = api.post(
        base + "destroy/", {"expunge": True, "delete_snapshot_metadata": True}, format="json"
    )
    assert response.status_code == 200
    assert response.data["state"] == "EXPUNGED"


def test_reboot_keeps_it_running_and_pools_report_libvirt_sizes(running_vm, user):
    from agents_app.models import PrimaryPool

    vm, conn = running_vm
    vm_services.vm_reboot(vm_id=vm.pk, actor=user)
    assert vms.vm_reboot_on_host(vm_id=vm.pk).error_text == ""
    assert domain_state(vm, conn) == "running"

    assert heartbeat.pools_report(host_name=vm.host.name) == 1
    pool = PrimaryPool.objects.get(pk=vm.pool_id)
    info = virt.pool_info(conn, pool.libvirt_pool_name)
    assert (pool.capacity_bytes, pool.used_bytes) == (info.capacity, info.allocation)
    assert pool.capacity_bytes > 0


def test_reboot_of_a_stopped_vm_is_409(api, running_vm):
    vm, conn = running_vm
    api.post(f"/api/v1/vms/{vm.uuid}/stop/")
    response = api.post(f"/api/v1/vms/{vm.uuid}/reboot/")
    assert response.status_code == 409
    assert "STOPPED" in response.data["detail"]
