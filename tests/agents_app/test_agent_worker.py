"""A real agent (manage.py run_agent: a Celery worker on the host's queue) on the real broker.

It deploys a VM sent through the API, and a worker SIGKILLed in the middle of a pool copy
leaves a state the next attempt finishes, with no partial file left.
"""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

from agents_app.agent import virt
from agents_app.models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine
from agents_app.pool_copies import template_prepare
from project.celery import app
from templates_app.copies import store_copy_download
from templates_app.models import Event, TemplateStoreRef

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    db = connection.settings_dict
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}"


def wait_until(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Agent:
    """run_agent in its own process group, so a SIGKILL takes qemu-img down with it."""

    def __init__(self, name: str, zone: str, uri: str, env: dict[str, str] | None = None):
        self.name, self.zone, self.uri = name, zone, uri
        self.extra_env = env or {}
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "STENCIL_POOL_COPY_LEASE_SECONDS": "2",
            "STENCIL_URL_ALLOW_LOOPBACK": "true",
            **self.extra_env,
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "run_agent",
                "--name",
                self.name,
                "--zone",
                self.zone,
                "--libvirt-uri",
                self.uri,
                "--loglevel",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = f"agent-{self.name}@{socket.gethostname()}"
        wait_until(
            lambda: (
                app.control.ping(destination=[worker], timeout=0.5)
                or self.process.poll() is not None
            ),
            what="the agent to start",
        )
        assert self.process.poll() is None, self.process.stdout.read().decode()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def setup(register, zone, tmp_path, httpserver, settings):
    """A READY template with 384 MiB of data (a copy takes long enough to be interrupted)."""
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    image = tmp_path / "big.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), "512M"], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 384M", str(image)],
        check=True,
        capture_output=True,
    )
    data = image.read_bytes()
    httpserver.expect_request("/big.qcow2").respond_with_data(data)
    template = register(
        url=httpserver.url_for("/big.qcow2"),
        checksum="{SHA-256}" + hashlib.sha256(data).hexdigest(),
    )
    del data
    store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "node.xml", pools={"pool-k": pool_dir})
    # Unique per test: agents of parallel test processes share the broker, and a host's queue
    # is named after the host.
    agent = Agent(f"kvm-{uuid.uuid4().hex[:8]}", zone.name, uri)
    yield template, pool_dir, agent
    agent.stop()


def test_sigkill_mid_copy_then_the_next_attempt_completes(setup, zone, admin_user):
    template, pool_dir, agent = setup
    agent.start()
    host = Host.objects.get(name=agent.name)
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-k", libvirt_pool_name="pool-k", path=str(pool_dir)
    )
    pool.hosts.add(host)

    template_prepare(template_id=template.pk, pool_ids=[pool.pk], actor=admin_user)
    wait_until(
        lambda: (
            TemplatePoolRef.objects.filter(template=template, state="DOWNLOAD_IN_PROGRESS").exists()
            and any(pool_dir.iterdir())
        ),
        what="the copy to start",
    )
    agent.kill()

    copy = TemplatePoolRef.objects.get(template=template, pool=pool)
    assert copy.state == "DOWNLOAD_IN_PROGRESS", "killed in the middle of the copy"
    assert copy.attempts == 1

    agent.start()
    template_prepare(template_id=template.pk, pool_ids=[pool.pk], actor=admin_user)
    wait_until(
        lambda: TemplatePoolRef.objects.filter(pk=copy.pk, state="DOWNLOADED").exists(),
        timeout=60,
        what="the next attempt to finish",
    )

    copy.refresh_from_db()
    assert copy.attempts == 2
    assert [p.name for p in pool_dir.iterdir()] == [Path(copy.install_path).name]
    store = TemplateStoreRef.objects.select_related("store").get(template=template)
    source = Path(store.store.path) / store.install_path
    same = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(source), copy.install_path],
        capture_output=True,
        text=True,
    )
    assert same.returncode == 0, same.stdout + same.stderr


def test_the_agent_runs_as_many_threads_as_stencil_agent_concurrency_says(zone, tmp_path):
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "node.xml", pools={"pool-c": pool_dir})
    agent = Agent(
        f"kvm-{uuid.uuid4().hex[:8]}", zone.name, uri, env={"STENCIL_AGENT_CONCURRENCY": "3"}
    )
    agent.start()
    try:
        worker = f"agent-{agent.name}@{socket.gethostname()}"
        stats = app.control.inspect(destination=[worker], timeout=5).stats()
        assert stats[worker]["pool"]["max-concurrency"] == 3
    finally:
        agent.stop()


def test_the_agent_deploys_a_vm_sent_through_the_api(setup, zone, api):
    template, pool_dir, agent = setup
    agent.start()
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-k", libvirt_pool_name="pool-k", path=str(pool_dir)
    )
    pool.hosts.add(Host.objects.get(name=agent.name))

    response = api.post(
        "/api/v1/vms/",
        {"name": "web", "template": str(template.uuid), "zone": str(zone.uuid), "deploy": True},
        format="json",
    )
    assert response.status_code == 201, response.data
    assert response.data["state"] == "STARTING"

    vm = wait_until(
        lambda: (
            VirtualMachine.objects.filter(uuid=response.data["id"])
            .exclude(state="STARTING")
            .first()
        ),
        timeout=60,
        what="the deploy",
    )
    assert vm.state == "RUNNING", vm.error_text
    assert api.get(f"/api/v1/vms/{vm.uuid}/").data["host"] is None, "hosts are for staff"
    assert vm.host.name == agent.name


def test_deploys_that_wait_for_one_copy_are_requeued_by_it_and_all_run(setup, zone, api):
    """Three deploys at once: one copies, the others wait without a worker thread; the copy's
    finish re-queues them on the host's queue, and the agent runs them."""
    template, pool_dir, agent = setup
    agent.start()
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-k", libvirt_pool_name="pool-k", path=str(pool_dir)
    )
    pool.hosts.add(Host.objects.get(name=agent.name))
    body = {"template": str(template.uuid), "zone": str(zone.uuid), "deploy": True}
    ids = [
        api.post("/api/v1/vms/", {**body, "name": f"web-{n}"}, format="json").data["id"]
        for n in range(3)
    ]
    wait_until(
        lambda: not VirtualMachine.objects.filter(uuid__in=ids, state="STARTING").exists(),
        timeout=90,
        what="the deploys",
    )
    vms = list(VirtualMachine.objects.filter(uuid__in=ids))
    waited = Event.objects.filter(
        object_uuid__in=ids, reason="waiting for the template's copy on pool 'pool-k'"
    )
    assert 1 <= waited.count() <= 2, "deploys waited on the copy, once each"
    assert [vm.state for vm in vms] == ["RUNNING"] * 3, [vm.error_text for vm in vms]
    copy = TemplatePoolRef.objects.get(template=template, pool=pool)
    assert (copy.state, copy.attempts) == ("DOWNLOADED", 1)
    assert {vm.pool_copy_id for vm in vms} == {copy.pk}


def test_direct_download_url_check_is_answered_by_an_up_host(setup, zone, httpserver):
    from agents_app.services import NoCapacity, UrlCheckFailed, direct_download_check

    template, pool_dir, agent = setup
    with pytest.raises(NoCapacity, match="no Up host"):
        direct_download_check(zone=zone, url=httpserver.url_for("/big.qcow2"), headers={})
    agent.start()

    answer = direct_download_check(zone=zone, url=httpserver.url_for("/big.qcow2"), headers={})
    assert answer["host"] == agent.name
    assert answer["checks"][0]["virtual_size"] == 512 * 1024 * 1024

    httpserver.expect_request("/gone.qcow2").respond_with_data("no", status=404)
    with pytest.raises(UrlCheckFailed, match=f"{agent.name}: HTTP 404") as refused:
        direct_download_check(zone=zone, url=httpserver.url_for("/gone.qcow2"), headers={})
    assert refused.value.field == "url"


def test_direct_download_registration_is_checked_by_a_host_and_verified(
    setup, zone, httpserver, api, settings
):
    import hashlib

    template, pool_dir, agent = setup
    settings.STENCIL_DIRECT_DOWNLOAD_URL_CHECK = True
    body = {"name": "dd", "format": "QCOW2", "zones": [str(zone.uuid)], "direct_download": True}

    response = api.post(
        "/api/v1/templates/",
        {**body, "url": httpserver.url_for("/big.qcow2"), "checksum": template.checksum},
        format="json",
    )
    assert response.status_code == 409, "no Up host yet"
    assert "no Up host" in response.data["detail"]

    agent.start()
    httpserver.expect_request("/gone.qcow2").respond_with_data("no", status=404)
    response = api.post(
        "/api/v1/templates/",
        {**body, "url": httpserver.url_for("/gone.qcow2"), "checksum": template.checksum},
        format="json",
    )
    assert response.status_code == 400
    assert f"{agent.name}: HTTP 404" in str(response.data["url"])

    # The virtual size the host read from the image's header is held to the limit at once.
    settings.STENCIL_MAX_VIRTUAL_SIZE = 256 * 1024 * 1024
    response = api.post(
        "/api/v1/templates/",
        {**body, "url": httpserver.url_for("/big.qcow2"), "checksum": template.checksum},
        format="json",
    )
    assert response.status_code == 400
    assert "exceeds the limit of 256 MiB (STENCIL_MAX_VIRTUAL_SIZE)" in str(response.data["url"])
    settings.STENCIL_MAX_VIRTUAL_SIZE = 2 << 40

    response = api.post(
        "/api/v1/templates/",
        {
            **body,
            "url": httpserver.url_for("/big.qcow2"),
            "checksum": template.checksum,
            "verify": True,
        },
        format="json",
    )
    assert response.status_code == 201, response.data
    copy = response.data["copies"][0]
    assert (copy["download_state"], copy["state"]) == ("BYPASSED", "READY")
    assert copy["size"] == 512 * 1024 * 1024
    source = TemplateStoreRef.objects.select_related("store").get(template=template)
    data = (Path(source.store.path) / source.install_path).read_bytes()
    assert TemplateStoreRef.objects.get(template__uuid=response.data["id"]).sha256 == (
        hashlib.sha256(data).hexdigest()
    )


def test_a_host_killed_mid_direct_download_leaves_nothing_the_next_attempt_cannot_finish(
    setup, zone, api, httpserver, tmp_path, settings
):
    import hashlib

    from werkzeug import Response

    template, pool_dir, agent = setup
    image = tmp_path / "dd.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), "64M"], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 6M", str(image)],
        check=True,
        capture_output=True,
    )
    data = image.read_bytes()

    def slowly(request):
        def chunks():
            for start in range(0, len(data), 256 * 1024):
                time.sleep(0.1)
                yield data[start : start + 256 * 1024]

        return Response(
            chunks(),
            headers={"Content-Length": str(len(data))},
            content_type="application/octet-stream",
        )

    httpserver.expect_request("/slow.qcow2").respond_with_handler(slowly)
    from templates_app import services

    direct = services.template_register(
        account=template.account,
        actor=None,
        name="dd",
        image_format="QCOW2",
        url=httpserver.url_for("/slow.qcow2"),
        zones=[zone],
        direct_download=True,
        checksum="{SHA-256}" + hashlib.sha256(data).hexdigest(),
    )
    agent.start()
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-k", libvirt_pool_name="pool-k", path=str(pool_dir)
    )
    pool.hosts.add(Host.objects.get(name=agent.name))
    body = {"name": "web", "template": str(direct.uuid), "zone": str(zone.uuid), "deploy": True}

    assert api.post("/api/v1/vms/", body, format="json").status_code == 201
    wait_until(
        lambda: any(p.name.startswith(".") for p in pool_dir.iterdir()),
        what="the download to start",
    )
    agent.kill()
    copy = TemplatePoolRef.objects.get(template=direct, pool=pool)
    assert copy.state == "DOWNLOAD_IN_PROGRESS"
    assert any(p.name.startswith(".") for p in pool_dir.iterdir()), "a partial file was left"

    agent.start()
    second = api.post("/api/v1/vms/", {**body, "name": "web-2"}, format="json").data
    vm = wait_until(
        lambda: VirtualMachine.objects.filter(uuid=second["id"]).exclude(state="STARTING").first(),
        timeout=60,
        what="the second deploy",
    )
    assert vm.state == "RUNNING", vm.error_text
    # The restarted agent also re-sent the deploy it was killed in (heartbeat.deploys_resume).
    first = wait_until(
        lambda: VirtualMachine.objects.filter(name="web").exclude(state="STARTING").first(),
        timeout=60,
        what="the killed deploy, re-sent by the restarted agent",
    )
    assert first.state == "RUNNING", first.error_text
    copy.refresh_from_db()
    assert (copy.state, copy.attempts) == ("DOWNLOADED", 2)
    assert sorted(p.name for p in pool_dir.iterdir()) == sorted(
        [
            Path(copy.install_path).name,
            Path(vm.root_disk_path).name,
            Path(first.root_disk_path).name,
        ]
    ), "no partial file remains"
    assert Path(copy.install_path).read_bytes() == data
