"""The CloudStack facade's VMs: apache-libcloud's CloudStack driver and the `cs` client drive
a live server and a real agent (manage.py run_agent on the libvirt test driver), and the REST
API shows the same VMs. Jobs resolve from the VM's state."""

import hashlib
import subprocess
import uuid

import pytest
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState, Provider
from rest_framework.test import APIClient

from agents_app.agent import heartbeat, virt
from agents_app.agent.vms import vm_deploy_on_host
from agents_app.cloudstack.offerings import OFFERINGS
from agents_app.models import Host, PrimaryPool, VirtualMachine
from templates_app.cloudstack.models import AsyncJob
from templates_app.copies import store_copy_download
from templates_app.models import TemplateStoreRef
from tests.cloudstack import call, cs_client, keys_for

from .test_agent_worker import Agent, wait_until

SMALL = next(o for o in OFFERINGS if o.name == "Small Instance")


def rest_vms(user) -> dict:
    api = APIClient()
    api.force_authenticate(user)
    return {vm["id"]: vm for vm in api.get("/api/v1/vms/").json()["results"]}


@pytest.fixture
def ready_template(register, httpserver, settings, tmp_path):
    """A READY template (a real 16 MiB qcow2 downloaded into the zone's store)."""
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "16M"], check=True)
    data = image.read_bytes()
    httpserver.expect_request("/base.qcow2").respond_with_data(data)
    template = register(
        url=httpserver.url_for("/base.qcow2"),
        checksum="{SHA-256}" + hashlib.sha256(data).hexdigest(),
    )
    store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
    return template


@pytest.fixture
def agent(ready_template, zone, tmp_path):
    """A real agent process on the libvirt test driver, its host Up with a pool."""
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "node.xml", pools={"pool-k": pool_dir})
    running = Agent(f"kvm-{uuid.uuid4().hex[:8]}", zone.name, uri)
    running.start()
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-k", libvirt_pool_name="pool-k", path=str(pool_dir)
    )
    pool.hosts.add(Host.objects.get(name=running.name))
    yield running
    running.stop()


def libcloud_driver(base_url: str, pair):
    driver_class = get_driver(Provider.CLOUDSTACK)
    return driver_class(
        key=pair.api_key, secret=pair.secret_key, url=base_url + "/client/api", secure=False
    )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_libcloud_lists_creates_reboots_and_destroys_a_node(
    live_server, agent, ready_template, zone, user
):
    driver = libcloud_driver(live_server.url, keys_for(user))

    images = driver.list_images()
    [location] = driver.list_locations()
    sizes = driver.list_sizes()
    size = next(s for s in sizes if s.id == SMALL.id)
    image = next(i for i in images if i.id == str(ready_template.uuid))
    node = driver.create_node(
        name="web", size=size, image=image, location=location, ex_start_vm=True
    )

    vm = VirtualMachine.objects.get(uuid=node.id)
    rest = rest_vms(user)[node.id]
    assert (vm.state, rest["state"]) == ("RUNNING", "RUNNING"), vm.error_text
    assert node.state == NodeState.RUNNING and node.name == rest["name"] == "web"
    assert node.extra["image_id"] == rest["template"] == str(ready_template.uuid)
    assert node.extra["zone_id"] == location.id == str(zone.uuid)
    assert node.extra["size_id"] == SMALL.id and (vm.vcpus, vm.memory_mib) == (1, 512)
    assert location.name == zone.name
    assert image.name == ready_template.name and image.extra["format"] == "QCOW2"
    assert {s.name for s in sizes} == {o.name for o in OFFERINGS}
    assert size.ram == 512 and size.extra["cpu"] == 1

    [listed] = driver.list_nodes()
    assert (listed.id, listed.state) == (node.id, NodeState.RUNNING)

    assert driver.reboot_node(listed) is True
    assert driver.destroy_node(listed) is True

    rest = rest_vms(user)[node.id]
    assert rest["state"] == "DESTROYED"
    [gone] = driver.list_nodes()
    assert gone.state == NodeState.TERMINATED
    assert AsyncJob.objects.filter(status=1).count() == 3
    wait_until(
        lambda: VirtualMachine.objects.filter(pk=vm.pk, host_task_token="").exists(),
        what="the agent to finish the destroyed VM's domain sync",
    )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_cs_client_deploys_stops_starts_and_expunges(
    live_server, agent, ready_template, zone, user
):
    client = cs_client(live_server.url, keys_for(user), method="post")

    deployed = client.deployVirtualMachine(
        templateid=str(ready_template.uuid),
        zoneid=str(zone.uuid),
        serviceofferingid=SMALL.id,
        name="db",
        fetch_result=True,
    )["virtualmachine"]
    stopped = client.stopVirtualMachine(id=deployed["id"], fetch_result=True)["virtualmachine"]
    started = client.startVirtualMachine(id=deployed["id"], fetch_result=True)["virtualmachine"]
    listed = client.listVirtualMachines(state="Running")
    destroyed = client.destroyVirtualMachine(id=deployed["id"], fetch_result=True)
    recovered = client.recoverVirtualMachine(id=deployed["id"])["virtualmachine"]
    client.destroyVirtualMachine(id=deployed["id"], fetch_result=True)
    expunged = client.expungeVirtualMachine(id=deployed["id"], fetch_result=True)

    assert deployed["state"] == "Running" and deployed["name"] == "db"
    assert (stopped["state"], started["state"]) == ("Stopped", "Running")
    assert [vm["id"] for vm in listed["virtualmachine"]] == [deployed["id"]]
    assert destroyed["virtualmachine"]["state"] == "Destroyed"
    assert recovered["state"] == "Stopped"
    assert expunged == {"success": True}
    assert client.listVirtualMachines() == {}
    assert VirtualMachine.objects.get(uuid=deployed["id"]).state == "EXPUNGED"


@pytest.fixture
def host_and_pool(zone, tmp_path):
    """An Up host (the test driver, in this process) and a pool; no agent process."""
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "node.xml", pools={"pool-1": pool_dir})
    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri=uri)
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-1", libvirt_pool_name="pool-1", path=str(pool_dir)
    )
    pool.hosts.add(host)
    return host, pool


@pytest.mark.django_db
def test_a_deploy_job_is_pending_while_starting_and_done_when_running(
    ready_template, zone, user, host_and_pool
):
    pair = keys_for(user)
    status, started = call(
        pair,
        "deployVirtualMachine",
        templateid=str(ready_template.uuid),
        zoneid=str(zone.uuid),
        serviceofferingid=SMALL.id,
    )
    pending = call(pair, "queryAsyncJobResult", jobid=started["jobid"])[1]
    vm_deploy_on_host(vm_id=VirtualMachine.objects.get(uuid=started["id"]).pk)
    done = call(pair, "queryAsyncJobResult", jobid=started["jobid"])[1]

    assert status == 200
    assert pending["jobstatus"] == 0 and "jobresult" not in pending
    assert done["jobstatus"] == 1, done
    assert done["jobresult"]["virtualmachine"]["state"] == "Running"
    assert done["jobresult"]["virtualmachine"]["name"].startswith("VM-")
    assert "hostid" not in done["jobresult"]["virtualmachine"], "hosts are for staff"


@pytest.mark.django_db
def test_a_failed_deploy_is_a_failed_job(register, zone, user, host_and_pool):
    never_downloaded = register(name="not-ready")
    pair = keys_for(user)
    _, started = call(
        pair,
        "deployVirtualMachine",
        templateid=str(never_downloaded.uuid),
        zoneid=str(zone.uuid),
        serviceofferingid=SMALL.id,
    )
    vm_deploy_on_host(vm_id=VirtualMachine.objects.get(uuid=started["id"]).pk)

    failed = call(pair, "queryAsyncJobResult", jobid=started["jobid"])[1]
    vm = VirtualMachine.objects.get(uuid=started["id"])
    assert vm.state == "ERROR"
    assert (failed["jobstatus"], failed["jobresultcode"]) == (2, 530)
    assert failed["jobresult"]["errortext"] == vm.error_text


@pytest.mark.django_db
def test_deploy_without_start_makes_a_stopped_vm(register, zone, user):
    template = register()
    pair = keys_for(user)
    _, started = call(
        pair,
        "deployVirtualMachine",
        templateid=str(template.uuid),
        zoneid=str(zone.uuid),
        serviceofferingid=SMALL.id,
        startvm="false",
        name="later",
    )
    job = call(pair, "queryAsyncJobResult", jobid=started["jobid"])[1]
    assert job["jobstatus"] == 1
    assert job["jobresult"]["virtualmachine"]["state"] == "Stopped"
    assert rest_vms(user)[started["id"]]["state"] == "STOPPED"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"serviceofferingid": None}, "missing parameter serviceofferingid"),
        ({"serviceofferingid": str(uuid.uuid4())}, "Invalid parameter serviceofferingid"),
        ({"templateid": "nope"}, "Invalid parameter templateid value=nope"),
        ({"zoneid": str(uuid.uuid4())}, "Invalid parameter zoneid"),
    ],
)
def test_bad_deploys_are_431_and_write_nothing(register, zone, user, params, text):
    template = register()
    base = {
        "templateid": str(template.uuid),
        "zoneid": str(zone.uuid),
        "serviceofferingid": SMALL.id,
    }
    merged = {k: v for k, v in {**base, **params}.items() if v is not None}

    status, body = call(keys_for(user), "deployVirtualMachine", **merged)

    assert (status, body["errorcode"]) == (431, 431)
    assert text in body["errortext"]
    assert not VirtualMachine.objects.exists() and not AsyncJob.objects.exists()


@pytest.mark.django_db
def test_no_capacity_is_533_and_writes_nothing(register, zone, user):
    template = register()
    status, body = call(
        keys_for(user),
        "deployVirtualMachine",
        templateid=str(template.uuid),
        zoneid=str(zone.uuid),
        serviceofferingid=SMALL.id,
    )
    assert (status, body["errorcode"]) == (533, 533)
    assert "no Up host" in body["errortext"]
    assert not VirtualMachine.objects.exists() and not AsyncJob.objects.exists()


@pytest.mark.django_db
def test_list_virtual_machines_costs_a_constant_number_of_queries(
    register, make_vm, user, django_assert_max_num_queries
):
    template = register()
    pair = keys_for(user)
    for n in range(3):
        make_vm(template, name=f"vm-{n}")
    with django_assert_max_num_queries(8) as few:
        call(pair, "listVirtualMachines")
    for n in range(3, 20):
        make_vm(template, name=f"vm-{n}")
    with django_assert_max_num_queries(len(few.captured_queries)):
        status, body = call(pair, "listVirtualMachines")
    assert status == 200 and body["count"] == 20


@pytest.mark.django_db
def test_network_listings_are_empty(user):
    pair = keys_for(user)
    for command in (
        "listNetworks",
        "listPublicIpAddresses",
        "listPortForwardingRules",
        "listIpForwardingRules",
    ):
        assert call(pair, command, zoneid=str(uuid.uuid4())) == (200, {})
