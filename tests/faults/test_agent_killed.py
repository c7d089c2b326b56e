"""Case 2: the agent SIGKILLed in the middle of a deploy (its pool copy under way).

tests/agents_app/test_agent_worker.py covers a killed pool copy re-requested by hand (prepare);
here nobody asks again: the deploy that was running when the agent died must reach RUNNING once
the agent is back, with one pool copy and nothing partial left in the pool.
"""

import hashlib
import uuid
from pathlib import Path

import pytest

from agents_app.agent import virt
from agents_app.models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine
from templates_app.copies import store_copy_download
from templates_app.models import TemplateStoreRef

from .conftest import assert_nothing_stuck_or_partial
from .processes import Agent, qcow2_image, wait_until

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("faults"),
]


@pytest.fixture
def big_template(register, server, loopback, tmp_path):
    data = qcow2_image(tmp_path / "big.qcow2", virtual="512M", written="384M")
    server.files["/big.qcow2"] = data
    template = register(
        url=server.url("/big.qcow2"), checksum="{SHA-256}" + hashlib.sha256(data).hexdigest()
    )
    store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
    return template


def test_a_deploy_killed_with_its_agent_runs_once_the_agent_is_back(
    big_template, zone, api, tmp_path, logs, store
):
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "node.xml", pools={"pool-k": pool_dir})
    agent = Agent(f"kvm-{uuid.uuid4().hex[:8]}", zone.name, uri, logs)
    agent.start()
    try:
        pool = PrimaryPool.objects.create(
            zone=zone, name="pool-k", libvirt_pool_name="pool-k", path=str(pool_dir)
        )
        pool.hosts.add(Host.objects.get(name=agent.name))
        body = {"template": str(big_template.uuid), "zone": str(zone.uuid), "deploy": True}
        vm_id = api.post("/api/v1/vms/", {**body, "name": "web"}, format="json").data["id"]
        wait_until(
            lambda: (
                TemplatePoolRef.objects.filter(state="DOWNLOAD_IN_PROGRESS").exists()
                and any(pool_dir.iterdir())
            ),
            what="the pool copy to start",
            logs=agent.tail,
        )
        agent.kill()
        assert VirtualMachine.objects.get(uuid=vm_id).state == "STARTING"

        agent.start()
        vm = wait_until(
            lambda: VirtualMachine.objects.filter(uuid=vm_id).exclude(state="STARTING").first(),
            timeout=40,
            what="the killed deploy to finish after the agent's restart",
            logs=agent.tail,
        )
    finally:
        agent.stop()
    assert vm.state == "RUNNING", vm.error_text
    copy = TemplatePoolRef.objects.get(template=big_template, pool=pool)
    assert (copy.state, copy.attempts) == ("DOWNLOADED", 2)
    assert sorted(p.name for p in pool_dir.iterdir()) == sorted(
        [Path(copy.install_path).name, Path(vm.root_disk_path).name]
    ), "one pool copy and the VM's disk, nothing partial"
    assert_nothing_stuck_or_partial(Path(store.path), pool_dir)
