"""What a check of the facade with real clients found missing: the calls libcloud, cloudmonkey
and Terraform's provider make besides the obvious ones (listVolumes, listSSHKeyPairs,
listCapabilities, listAsyncJobs, a default NIC), administrators' infrastructure listings that
tenants are told do not exist, CloudStack's XML default and its omitted nulls."""

from xml.etree import ElementTree

import pytest
import requests
import trustme
from cs import CloudStack, CloudStackApiException
from libcloud.compute.providers import get_driver
from libcloud.compute.types import Provider

from agents_app.agent import heartbeat
from agents_app.models import PrimaryPool, TemplatePoolRef
from templates_app.cloudstack.models import AsyncJob
from tests.cloudstack import ENDPOINT, call, cs_client, keys_for

pytestmark = pytest.mark.django_db(transaction=True)


def libcloud_driver(base_url: str, pair):
    driver_class = get_driver(Provider.CLOUDSTACK)
    return driver_class(
        key=pair.api_key, secret=pair.secret_key, url=base_url + ENDPOINT, secure=False
    )


@pytest.fixture
def host_and_pool(zone, tmp_path):
    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-1", libvirt_pool_name="pool-1", path=str(tmp_path / "pool")
    )
    pool.hosts.add(host)
    return host, pool


def test_libcloud_lists_a_vms_root_volume_and_no_key_pairs(
    live_server, register, make_vm, user, other_user
):
    template = register()
    vm = make_vm(template, name="web")
    driver = libcloud_driver(live_server.url, keys_for(user))

    volumes = driver.list_volumes()
    [node] = driver.list_nodes()
    of_node = driver.list_volumes(node=node)
    others = libcloud_driver(live_server.url, keys_for(other_user)).list_volumes()

    assert [v.id for v in volumes] == [str(vm.uuid)] == [v.id for v in of_node]
    assert volumes[0].name == "ROOT-web" and volumes[0].size == 0, "no copy knows its size yet"
    assert driver.list_key_pairs() == []
    assert node.private_ips == [] and node.public_ips == [], "the default NIC has no address"
    assert others == [], "another account's VMs and volumes are not listed"


def test_terraform_reads_nic_zero_and_the_root_volume_of_a_vm(live_server, register, make_vm, user):
    """cloudstack_instance: after deployVirtualMachine it reads `nic[0].ipaddress` (a panic on
    an empty list), then `listVolumes type=ROOT virtualmachineid=`."""
    vm = make_vm(register())
    client = cs_client(live_server.url, keys_for(user))

    [listed] = client.listVirtualMachines(id=str(vm.uuid))["virtualmachine"]
    root = client.listVolumes(type="ROOT", virtualmachineid=str(vm.uuid))
    data = client.listVolumes(type="DATADISK", virtualmachineid=str(vm.uuid))

    assert len(listed["nic"]) == 1 and listed["nic"][0]["isdefault"] is True
    assert "ipaddress" not in listed["nic"][0]
    assert [v["virtualmachineid"] for v in root["volume"]] == [str(vm.uuid)]
    assert root["volume"][0]["type"] == "ROOT" and "storage" not in root["volume"][0]
    assert data == {}


def test_tenants_are_told_infrastructure_commands_do_not_exist(
    live_server, user, admin_user, host_and_pool, zone
):
    host, pool = host_and_pool
    tenant = cs_client(live_server.url, keys_for(user))
    admin = cs_client(live_server.url, keys_for(admin_user))

    refused = {}
    for command in ("listHosts", "listStoragePools", "listTemplateDirectDownloadCertificates"):
        with pytest.raises(CloudStackApiException) as error:
            getattr(tenant, command)()
        refused[command] = error.value.error
    hosts = admin.listHosts()
    pools = admin.listStoragePools(zoneid=str(zone.uuid))
    apis = {api["name"] for api in tenant.listApis()["api"]}

    assert {e["errorcode"] for e in refused.values()} == {432}
    assert all("does not exist" in e["errortext"] for e in refused.values())
    assert not apis & set(refused), "listApis does not offer them to tenants"
    assert [(h["id"], h["state"], h["type"]) for h in hosts["host"]] == [
        (str(host.uuid), "Up", "Routing")
    ]
    assert [(p["id"], p["path"]) for p in pools["storagepool"]] == [(str(pool.uuid), pool.path)]


def test_staff_lists_live_direct_download_certificates(live_server, admin_user, zone):
    admin = cs_client(live_server.url, keys_for(admin_user), method="post")
    pem = trustme.CA().cert_pem.bytes().decode()
    uploaded = admin.uploadTemplateDirectDownloadCertificate(
        certificate=pem, name="corp-ca", hypervisor="KVM", zoneid=str(zone.uuid)
    )["directdownloadcertificate"]

    listed = admin.listTemplateDirectDownloadCertificates(zoneid=str(zone.uuid))
    with_hosts = admin.listTemplateDirectDownloadCertificates(listhosts=True)
    admin.revokeTemplateDirectDownloadCertificate(hypervisor="KVM", id=uploaded["id"])
    after = admin.listTemplateDirectDownloadCertificates()

    assert [c["alias"] for c in listed["directdownloadcertificate"]] == ["corp-ca"]
    assert "hostsmap" not in listed["directdownloadcertificate"][0]
    assert with_hosts["directdownloadcertificate"][0]["hostsmap"] == []
    assert after == {}


def test_capabilities_and_the_callers_own_async_jobs(live_server, register, user, other_user):
    template = register()
    mine = cs_client(live_server.url, keys_for(user))
    theirs = cs_client(live_server.url, keys_for(other_user))
    started = mine.deleteTemplate(id=str(template.uuid))

    capability = mine.listCapabilities()["capability"]
    jobs = mine.listAsyncJobs()
    others = theirs.listAsyncJobs()

    assert capability["cloudstackversion"].startswith("4.")
    assert capability["securitygroupsenabled"] is False
    assert [j["jobid"] for j in jobs["asyncjobs"]] == [started["jobid"]]
    assert (
        jobs["asyncjobs"][0]["jobstatus"] == 1 and jobs["asyncjobs"][0]["cmd"] == "deleteTemplate"
    )
    assert others == {} and AsyncJob.objects.count() == 1


def test_null_fields_are_left_out_as_cloudstack_does(live_server, register, user):
    """A template without an OS type has no `ostypeid` (not null), one not downloaded no
    `size`: libcloud tests `img.get("size")`, Go clients expect no null."""
    register()
    client = cs_client(live_server.url, keys_for(user))

    [row] = client.listTemplates(templatefilter="self")["template"]

    assert "ostypeid" not in row and "size" not in row
    assert None not in row.values()


def test_the_answer_is_xml_unless_json_is_asked_for(live_server, user, zone):
    pair = keys_for(user)
    as_xml = {"command": "listZones", "apiKey": pair.api_key}
    CloudStack(endpoint="http://unused", key=pair.api_key, secret=pair.secret_key)._sign(as_xml)

    answer = requests.get(live_server.url + ENDPOINT, params=as_xml, timeout=10)
    refused = requests.get(
        live_server.url + ENDPOINT, params=dict(as_xml, signature="AAAA"), timeout=10
    )

    root = ElementTree.fromstring(answer.content)
    error = ElementTree.fromstring(refused.content)
    assert answer.headers["Content-Type"].startswith("text/xml")
    assert root.tag == "listzonesresponse" and root.findtext("count") == "1"
    assert root.find("zone").findtext("id") == str(zone.uuid)
    assert refused.status_code == 401 and error.findtext("errorcode") == "401"
    assert call(pair, "listZones")[0] == 200, "response=json is still JSON"


def test_pool_copy_size_is_the_root_volumes_size(
    live_server, register, make_vm, user, host_and_pool
):
    _, pool = host_and_pool
    template = register()
    copy = TemplatePoolRef.objects.create(template=template, pool=pool, size=5 * 2**30)
    vm = make_vm(template)
    type(vm).objects.filter(pk=vm.pk).update(pool_copy=copy)

    [volume] = cs_client(live_server.url, keys_for(user)).listVolumes()["volume"]

    assert volume["size"] == 5 * 2**30
