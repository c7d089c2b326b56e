"""Deleting a template stops its direct downloads into pools that no deploy needs; a copy a
deploy is waiting for goes on (a VM deployed before the delete still gets its disk)."""

import threading
import time

import pytest
from django.db import connections
from werkzeug import Response

from agents_app.agent.pool_copies import CANCELLED_BY_DELETE, pool_copies_cancel, pool_copy_ensure
from agents_app.models import TemplatePoolRef, VirtualMachine
from templates_app import services
from tests import libvirt_backends

from .test_direct_download import sha256


@pytest.fixture
def slow_image(httpserver, tmp_path):
    import subprocess

    path = tmp_path / "dd.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "64M"], check=True)
    data = path.read_bytes()
    started = threading.Event()

    def slow(request):
        def chunks():
            yield data[:65536]
            started.set()
            for _ in range(100):
                time.sleep(0.1)
                yield b""
            yield data[65536:]

        return Response(chunks(), headers={"Content-Length": str(len(data))})

    httpserver.expect_request("/dd.qcow2").respond_with_handler(slow)
    return httpserver.url_for("/dd.qcow2"), data, started


@pytest.mark.django_db(transaction=True)
def test_deleting_a_template_stops_its_pinned_direct_download(
    slow_image, register, zone, user, tmp_path, settings
):
    from agents_app.agent import heartbeat
    from agents_app.models import PrimaryPool

    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    url, data, started = slow_image
    template = register(url=url, checksum=sha256(data), direct_download=True)
    with libvirt_backends.open_backend("test", tmp_path) as backend:
        host = heartbeat.host_register(name="kvm-c", zone=zone, libvirt_uri=backend.uri)
        pool = PrimaryPool.objects.create(
            zone=zone,
            name="pool-c",
            libvirt_pool_name=backend.pool_name,
            path=str(backend.pool_dir),
        )
        pool.hosts.add(host)
        outcome = {}

        def copy():
            try:
                pool_copy_ensure(template_id=template.pk, pool_id=pool.pk, libvirt_uri=backend.uri)
            except Exception as exc:  # the cancelled copy raises: that is the point
                outcome["error"] = exc
            finally:
                connections.close_all()

        worker = threading.Thread(target=copy)
        worker.start()
        assert started.wait(10)
        time.sleep(1.2)  # past the first progress write

        # After commit, templates_deactivated reaches compute's handler (pool_copies_cancel).
        services.template_deactivate(template_id=template.pk, actor=user)
        worker.join(15)

        assert not worker.is_alive(), "the download stopped at its next progress write"
        ref = TemplatePoolRef.objects.get(template=template, pool=pool)
        assert (ref.state, ref.error_text, ref.lease_owner) == (
            "DOWNLOAD_ERROR",
            CANCELLED_BY_DELETE,
            "",
        )
        assert "cancelled" in str(outcome["error"])
        assert list(backend.pool_dir.iterdir()) == [], "no partial file in the pool"


@pytest.mark.django_db
def test_a_copy_a_deploy_needs_is_not_cancelled(register, zone, account, user, tmp_path):
    from agents_app.models import PrimaryPool

    template = register(direct_download=True, checksum="{SHA-256}" + "a" * 64)
    pool = PrimaryPool.objects.create(zone=zone, name="p", libvirt_pool_name="p", path="/x")
    ref = TemplatePoolRef.objects.create(template=template, pool=pool)
    TemplatePoolRef.objects.filter(pk=ref.pk).update(state="DOWNLOAD_IN_PROGRESS", lease_owner="w")
    VirtualMachine.objects.create(
        name="early", template=template, zone=zone, account=account, pool=pool
    )
    VirtualMachine.objects.filter(name="early").update(state="STARTING")

    assert pool_copies_cancel(template_ids=[template.pk]) == 0
    ref.refresh_from_db()
    assert ref.state == "DOWNLOAD_IN_PROGRESS"
