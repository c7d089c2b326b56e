"""A real Celery worker process on the real broker runs the sweep end to end."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import kombu
import pytest
from django.db import connection

from project.celery import app
from templates_app import services
from templates_app.models import Template, TemplateStoreRef
from templates_app.tasks import gc_sweep_task

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    db = connection.settings_dict
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def worker(private_celery_queue):
    """A real worker on this test process's queue, started empty.

    Earlier transactional tests leave tasks on the queue that nothing consumed (downloads from
    servers long gone, deploys to hosts that no longer exist); a solo worker would work through
    them first and miss the test's deadline, so the queue is purged before it starts.
    """
    with app.connection_for_write() as conn:
        queue = kombu.Queue(private_celery_queue, channel=conn.default_channel)
        queue.declare()  # RabbitMQ refuses to purge a queue it has never seen
        queue.purge()
    name = f"stencil-test-{uuid.uuid4().hex[:8]}@localhost"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "STENCIL_URL_ALLOW_LOOPBACK": "true",
        "STENCIL_GC_GRACE_SECONDS": "0",  # as in this process (conftest.gc_grace_off)
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "project",
            "worker",
            "--pool=solo",
            "-Q",
            private_celery_queue,
            "-n",
            name,
            "--loglevel=WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not app.control.ping(destination=[name], timeout=0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {process.stdout.read().decode()}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_state(template: Template, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        template.refresh_from_db()
        if template.state == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"{template} stayed {template.state}, expected {state}")


def test_deleting_an_unused_template_is_swept_by_the_worker(worker, register, make_vm, user):
    unused = register(name="unused")
    used = register(name="used")
    make_vm(used)

    services.template_deactivate(template_id=unused.pk, actor=user)
    services.template_deactivate(template_id=used.pk, actor=user)

    wait_for_state(unused, "REMOVED")
    result = gc_sweep_task.delay().get(timeout=20)
    assert result["removed_count"] == 0, "a repeat finds nothing left to do"
    assert [h["name"] for h in result["held"]] == ["used"]
    used.refresh_from_db()
    assert used.state == "INACTIVE"


def test_registration_is_downloaded_by_the_storage_worker(
    worker, register, httpserver, settings, tmp_path, store
):
    import hashlib

    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    image = tmp_path / "w.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), "8M"], check=True, capture_output=True
    )
    data = image.read_bytes()
    httpserver.expect_request("/w.qcow2").respond_with_data(data)

    template = register(
        url=httpserver.url_for("/w.qcow2"), checksum="{SHA-256}" + hashlib.sha256(data).hexdigest()
    )

    copy = TemplateStoreRef.objects.get(template=template)
    deadline = time.monotonic() + 20
    while copy.state != "READY" and time.monotonic() < deadline:
        time.sleep(0.1)
        copy.refresh_from_db()
    assert (copy.download_state, copy.state) == ("DOWNLOADED", "READY"), copy.error_text
    assert (Path(store.path) / copy.install_path).read_bytes() == data


def test_a_sweep_queued_through_the_api_is_run_by_the_worker(
    worker, register, make_vm, user, admin_api, monkeypatch
):
    # Deleting an unused template sends a sweep of its own; keep it out of this test's way.
    monkeypatch.setattr(services, "_enqueue_sweep_of", lambda template_ids: None)
    unused = register(name="unused")
    used = register(name="used")
    make_vm(used)
    for template in (unused, used):
        services.template_deactivate(template_id=template.pk, actor=user)

    response = admin_api.post("/api/v1/gc/sweep/", {"dry_run": False}, format="json")
    assert response.status_code == 202
    assert response.data["state"] == "QUEUED"

    deadline = time.monotonic() + 20
    run = admin_api.get(response["Location"]).data
    while run["state"] in ("QUEUED", "RUNNING") and time.monotonic() < deadline:
        time.sleep(0.1)
        run = admin_api.get(response["Location"]).data
    assert run["state"] == "DONE", run
    assert run["result"]["removed"] == [{"id": str(unused.uuid), "name": "unused"}]
    assert [h["name"] for h in run["result"]["held"]] == ["used"]
    unused.refresh_from_db()
    assert unused.state == "REMOVED"
