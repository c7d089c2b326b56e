"""Deploys through libvirt and qemu-img: pool copies by policy, single flight under a storm.

The libvirt test driver (node XML with real pool directories) stands in for a host where no
daemon runs; the real libvirtd runs too (make test starts it). qemu-img writes every byte.
"""

import hashlib
import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connections

from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.agent.vms import vm_deploy_on_host
from agents_app.models import PrimaryPool, TemplatePoolRef, VirtualMachine
from agents_app.pool_copies import pool_copy_set_pinned
from templates_app import services
from templates_app.copies import store_copy_download
from templates_app.images.qemu import run_qemu_img
from templates_app.models import TemplateStoreRef
from tests import libvirt_backends

libvirt_backend = libvirt_backends.libvirt_backend

STORM = 20


@pytest.fixture
def image_server(httpserver, settings, tmp_path):
    """A real qcow2 with a known pattern, served over HTTP for registration."""
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    image = tmp_path / "base.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), "16M"], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(image)],
        check=True,
        capture_output=True,
    )
    data = image.read_bytes()
    httpserver.expect_request("/base.qcow2").respond_with_data(data)
    return httpserver.url_for("/base.qcow2"), "{SHA-256}" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def cloud(libvirt_backend, register, image_server, zone):
    """A READY template in the zone's store, an Up host and a pool it reaches."""
    uri, pool_name, pool_dir, _ = libvirt_backend
    url, checksum = image_server

    def make(policy="CACHE"):
        template = register(url=url, checksum=checksum, primary_policy=policy)
        store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
        return template

    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri=uri)
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-1", libvirt_pool_name=pool_name, path=str(pool_dir)
    )
    pool.hosts.add(host)
    return make, host, pool


def backing_of(path: str) -> str | None:
    # -U: the running domain holds the image's write lock; reading its header is still safe.
    info = json.loads(run_qemu_img(["info", "-U", "-f", "qcow2", "--output=json", path]).stdout)
    return info.get("full-backing-filename")


def reads_pattern(path: str) -> bool:
    result = subprocess.run(
        ["qemu-io", "-U", "-f", "qcow2", "-r", "-c", "read -P 0x5a 1M 64k", path],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout


@pytest.mark.django_db
def test_cache_policy_disk_is_an_overlay_on_one_pool_copy(cloud, account, user, zone):
    make, host, pool = cloud
    template = make("CACHE")

    vms = []
    for n in range(2):
        vm = vm_services.vm_deploy(
            name=f"vm-{n}", template_id=template.pk, zone=zone, account=account, actor=user
        )
        vms.append(vm_deploy_on_host(vm_id=vm.pk))

    copy = TemplatePoolRef.objects.get(template=template, pool=pool)
    assert copy.state == "DOWNLOADED"
    assert copy.attempts == 1
    for vm in vms:
        assert vm.state == "RUNNING", vm.error_text
        assert backing_of(vm.root_disk_path) == copy.install_path
        assert reads_pattern(vm.root_disk_path)


@pytest.mark.django_db
def test_direct_policy_copies_from_the_store_and_caches_nothing(cloud, account, user, zone):
    make, host, pool = cloud
    template = make("DIRECT")
    vm = vm_services.vm_deploy(
        name="d", template_id=template.pk, zone=zone, account=account, actor=user
    )

    vm = vm_deploy_on_host(vm_id=vm.pk)

    assert vm.state == "RUNNING", vm.error_text
    assert backing_of(vm.root_disk_path) is None
    assert reads_pattern(vm.root_disk_path)
    assert not TemplatePoolRef.objects.filter(template=template).exists()


@pytest.mark.django_db
def test_a_failed_pool_copy_is_recorded_and_retried_by_the_next_deploy(
    cloud, account, user, zone, store
):
    make, host, pool = cloud
    template = make("CACHE")
    ref = TemplateStoreRef.objects.get(template=template)
    image = Path(store.path) / ref.install_path
    hidden = image.with_suffix(".hidden")
    image.rename(hidden)
    first = vm_services.vm_deploy(
        name="a", template_id=template.pk, zone=zone, account=account, actor=user
    )
    first = vm_deploy_on_host(vm_id=first.pk)
    assert first.state == "ERROR"
    copy = TemplatePoolRef.objects.get(template=template, pool=pool)
    assert copy.state == "DOWNLOAD_ERROR"
    assert copy.error_text
    assert not any(Path(pool.path).iterdir()), "no partial file remains"

    hidden.rename(image)
    second = vm_services.vm_deploy(
        name="b", template_id=template.pk, zone=zone, account=account, actor=user
    )
    assert vm_deploy_on_host(vm_id=second.pk).state == "RUNNING"
    copy.refresh_from_db()
    assert (copy.state, copy.attempts) == ("DOWNLOADED", 2)


@pytest.mark.django_db
def test_no_up_host_is_409(api, register, zone, store):
    template = register()
    response = api.post(
        "/api/v1/vms/",
        {"name": "x", "template": str(template.uuid), "zone": str(zone.uuid)},
        format="json",
    )
    assert response.status_code == 409
    assert "no Up host" in response.data["detail"]


@pytest.mark.django_db
def test_pinned_copy_is_a_live_reference(cloud, user, admin_user):
    make, host, pool = cloud
    template = make("CACHE")
    pool_copy_set_pinned(template_id=template.pk, pool_id=pool.pk, pinned=True, actor=admin_user)
    services.template_deactivate(template_id=template.pk, actor=user)

    result = services.gc_sweep()
    template.refresh_from_db()
    assert template.state == "INACTIVE"
    assert result.held[0]["references"]["pinned_pool_copy"] == 1

    pool_copy_set_pinned(template_id=template.pk, pool_id=pool.pk, pinned=False, actor=admin_user)
    services.gc_sweep()
    template.refresh_from_db()
    assert template.state == "REMOVED"


@pytest.fixture
def test_driver_cloud(register, image_server, zone, tmp_path):
    """The storm runs on the test driver: 20 real qemu processes would only measure qemu."""
    with libvirt_backends.open_backend("test", tmp_path) as backend:
        url, checksum = image_server
        template = register(url=url, checksum=checksum)
        store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
        host = heartbeat.host_register(name="kvm-t", zone=zone, libvirt_uri=backend.uri)
        pool = PrimaryPool.objects.create(
            zone=zone,
            name="pool-t",
            libvirt_pool_name=backend.pool_name,
            path=str(backend.pool_dir),
        )
        pool.hosts.add(host)
        yield template, pool


@pytest.mark.django_db(transaction=True)
def test_deploy_storm_makes_exactly_one_copy(test_driver_cloud, account, user, zone):
    template, pool = test_driver_cloud
    barrier = threading.Barrier(STORM)

    def deploy(n: int) -> VirtualMachine:
        try:
            vm = vm_services.vm_deploy(
                name=f"storm-{n}", template_id=template.pk, zone=zone, account=account, actor=user
            )
            barrier.wait()
            return vm_deploy_on_host(vm_id=vm.pk)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=STORM) as pool_executor:
        vms = list(pool_executor.map(deploy, range(STORM)))

    copies = list(TemplatePoolRef.objects.filter(template=template))
    assert len(copies) == 1
    copy = copies[0]
    assert (copy.state, copy.attempts) == ("DOWNLOADED", 1), "exactly one copy was made"
    assert all(vm.state == "RUNNING" for vm in vms), [vm.error_text for vm in vms]
    assert {backing_of(vm.root_disk_path) for vm in vms} == {copy.install_path}
    assert len(list(Path(pool.path).glob("tmpl-*"))) == 1


@pytest.mark.django_db(transaction=True)
def test_deploy_vs_delete_vs_sweep_with_pool_copies(
    test_driver_cloud, account, user, zone, register, image_server
):
    """Never a REMOVED template under a live VM, and never an evicted copy under a VM disk."""
    from tests.templates_app.test_races import assert_invariants, run_together

    template, pool = test_driver_cloud
    url, checksum = image_server
    for i in range(8):
        template = register(name=f"race-{i}", url=url, checksum=checksum)
        store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)

        def deploy(t=template, i=i):
            vm = vm_services.vm_deploy(
                name=f"r-{i}", template_id=t.pk, zone=zone, account=account, actor=user
            )
            return vm_deploy_on_host(vm_id=vm.pk)

        vm, _, _ = run_together(
            deploy,
            lambda t=template: services.template_deactivate(template_id=t.pk, actor=user),
            lambda t=template: (services.gc_sweep(template_ids=[t.pk]), services.gc_sweep()),
        )
        services.gc_sweep()
        services.gc_sweep()
        assert_invariants()
        template.refresh_from_db()
        if isinstance(vm, VirtualMachine):
            assert vm.state == "RUNNING", vm.error_text
            assert template.state == "INACTIVE"
            copy = TemplatePoolRef.objects.get(template=template, pool=pool)
            assert copy.state == "DOWNLOADED"
            assert backing_of(vm.root_disk_path) == copy.install_path
        else:
            assert template.state == "REMOVED"
