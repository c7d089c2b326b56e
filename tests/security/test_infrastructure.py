"""Infrastructure is for staff (CloudStack shows hosts, storage pools and image stores to root
admins only): a tenant gets 403 on those endpoints and null where a VM or a template copy would
name a host, pool, store or path."""

import pytest

from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.models import PrimaryPool

pytestmark = pytest.mark.django_db


@pytest.fixture
def host_and_pool(zone):
    host = heartbeat.host_register(
        name="kvm-secret", zone=zone, libvirt_uri="qemu+ssh://10.0.0.9/system"
    )
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-secret", libvirt_pool_name="p", path="/srv/secret-pool"
    )
    pool.hosts.add(host)
    return host, pool


@pytest.mark.parametrize(
    "path",
    ["/api/v1/hosts/", "/api/v1/primary-pools/", "/api/v1/pool-copies/", "/api/v1/image-stores/"],
)
def test_a_tenant_cannot_list_infrastructure(api, admin_api, host_and_pool, store, path):
    refused = api.get(path)
    assert refused.status_code == 403
    assert "secret" not in refused.content.decode()
    assert admin_api.get(path).status_code == 200


def test_a_tenants_vm_and_template_name_no_host_pool_store_or_path(
    api, admin_api, register, host_and_pool, zone, account, user, store
):
    template = register()
    vm = vm_services.vm_deploy(
        name="web", template_id=template.pk, zone=zone, account=account, actor=user
    )

    mine = api.get(f"/api/v1/vms/{vm.uuid}/").data
    assert (mine["host"], mine["pool"], mine["root_disk_path"]) == (None, None, None)
    staff_view = admin_api.get(f"/api/v1/vms/{vm.uuid}/").data
    assert (staff_view["host"], staff_view["pool"]) == ("kvm-secret", "pool-secret")

    copy = api.get(f"/api/v1/templates/{template.uuid}/").data["copies"][0]
    assert (copy["store"], copy["store_name"], copy["install_path"]) == (None, None, None)
    assert admin_api.get(f"/api/v1/templates/{template.uuid}/").data["copies"][0]["store_name"]
