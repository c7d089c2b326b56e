"""Case 7: a host that stops heartbeating (its agent SIGSTOPped) while it owns a deploy: once it
is marked Down, the deploy moves to another Up host of the pool, or errors with the reason;
nothing stays STARTING."""

import hashlib
import os
import signal
import uuid

import pytest

from agents_app.agent import virt
from agents_app.host_services import hosts_mark_down
from agents_app.models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine
from templates_app.copies import store_copy_download
from templates_app.models import TemplateStoreRef

from .processes import Agent, qcow2_image, wait_until

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("faults"),
]


def test_a_deploy_on_a_host_gone_silent_moves_or_errors(
    register, server, loopback, tmp_path, zone, api, logs
):
    data = qcow2_image(tmp_path / "big.qcow2", virtual="512M", written="384M")
    server.files["/big.qcow2"] = data
    template = register(
        url=server.url("/big.qcow2"), checksum="{SHA-256}" + hashlib.sha256(data).hexdigest()
    )
    store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "node.xml", pools={"pool-k": pool_dir})
    agents = [
        Agent(f"kvm-{uuid.uuid4().hex[:8]}", zone.name, uri, logs, STENCIL_HEARTBEAT_SECONDS="1")
        for _ in range(2)
    ]
    for agent in agents:
        agent.start()
    try:
        pool = PrimaryPool.objects.create(
            zone=zone, name="pool-k", libvirt_pool_name="pool-k", path=str(pool_dir)
        )
        pool.hosts.add(*Host.objects.filter(name__in=[a.name for a in agents]))
        body = {"template": str(template.uuid), "zone": str(zone.uuid), "deploy": True}
        vm_id = api.post("/api/v1/vms/", {**body, "name": "web"}, format="json").data["id"]
        wait_until(
            lambda: TemplatePoolRef.objects.filter(state="DOWNLOAD_IN_PROGRESS").exists(),
            what="the pool copy to start",
        )
        owner = VirtualMachine.objects.get(uuid=vm_id).host.name
        silent = next(a for a in agents if a.name == owner)
        os.killpg(silent.popen.pid, signal.SIGSTOP)
        wait_until(lambda: hosts_mark_down(missed_after_seconds=3), timeout=20, what="Down")
        vm = wait_until(
            lambda: VirtualMachine.objects.filter(uuid=vm_id).exclude(state="STARTING").first(),
            timeout=30,
            what="the deploy of the silent host to move or fail",
            logs=lambda: "\n".join(a.tail() for a in agents),
        )
        assert vm.state in ("RUNNING", "ERROR")
        if vm.state == "RUNNING":
            assert vm.host.name != owner
        else:
            assert owner in vm.error_text
    finally:
        for agent in agents:
            if agent.alive():
                os.killpg(agent.popen.pid, signal.SIGCONT)
            agent.stop()
