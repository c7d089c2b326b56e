"""Deploys through libvirt and qemu-img: pool copies by policy, single flight under a storm.

The libvirt test driver (node XML with real pool directories) stands in for a host where no
daemon runs; the real libvirtd runs too (make test starts it). qemu-img writes every byte.
"""

import hashlib
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents_app import services as vm_services
from agents_app.agent import heartbeat, pool_copies, tasks
from agents_app.agent.vms import vm_copy_wait_recheck, vm_deploy_on_host, vm_deploys_woken_on_host
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


@pytest.fixture
def sent(monkeypatch):
    """What the host-side code enqueues (after commit): (task, kwargs, queue, countdown)."""
    calls: list[tuple[str, dict, str, float | None]] = []

    def recorder(name: str):
        def record(kwargs=None, queue=None, countdown=None):
            calls.append((name, kwargs, queue, countdown))

        return record

    for task in (
        tasks.vm_deploy_task,
        tasks.vm_deploys_woken_task,
        tasks.vm_rebuild_task,
        tasks.pool_copy_waiter_recheck_task,
    ):
        monkeypatch.setattr(task, "apply_async", recorder(task.name.rsplit(".", 1)[-1]))
    return calls


def deploys_in(calls) -> list[tuple[dict, str]]:
    return [(kwargs, queue) for name, kwargs, queue, _ in calls if name == "vm_deploy_task"]


def woken_in(calls) -> list[tuple[list[int], str]]:
    """The batches of deploys a copy's finish woke (vm_deploys_woken_task): (vm ids, queue)."""
    return [
        (kwargs["vm_ids"], queue)
        for name, kwargs, queue, _ in calls
        if name == "vm_deploys_woken_task"
    ]


@pytest.mark.django_db(transaction=True)
def test_deploy_storm_makes_exactly_one_copy(test_driver_cloud, account, user, zone, sent):
    """One deploy copies; the others wait on its copy without a thread or a transaction, and
    its finish re-queues each of them to its host's queue."""
    template, pool = test_driver_cloud
    barrier = threading.Barrier(STORM, action=sent.clear)  # the API's sends are not counted

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
    waiting = {vm.pk for vm in vms if vm.state == "STARTING"}
    assert waiting, "deploys met the copy while it was being made"
    assert all(vm.state in ("RUNNING", "STARTING") for vm in vms), [vm.error_text for vm in vms]
    # Every waiter was re-queued by the copy's finish (the others found it DOWNLOADED), in one
    # batch for the host's queue.
    [(requeued, queue)] = woken_in(sent)
    assert sorted(requeued) == sorted(waiting) and queue == pool.hosts.get().queue
    assert not deploys_in(sent)
    assert not VirtualMachine.objects.filter(awaited_copy__isnull=False).exists()

    def deliver() -> list[int]:
        try:
            return vm_deploys_woken_on_host(vm_ids=requeued)
        finally:
            connections.close_all()

    # Delivered twice at once (a broker's redelivery): each VM is deployed by one of them.
    with ThreadPoolExecutor(max_workers=2) as pool_executor:
        deployed = [pool_executor.submit(deliver) for _ in range(2)]
        deployed = [future.result() for future in deployed]
    assert sorted(deployed[0] + deployed[1]) == sorted(requeued)
    assert vm_deploys_woken_on_host(vm_ids=requeued) == []  # a late redelivery: nothing to do
    vms = list(VirtualMachine.objects.filter(template=template))
    assert not any(vm.host_task_token for vm in vms), "every claim was given back"
    assert len(vms) == STORM
    copy.refresh_from_db()
    assert copy.attempts == 1
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


# Waiters: a deploy that needs a copy another worker is making returns, and is re-queued ------


@pytest.fixture
def blocked_copy(monkeypatch):
    """The next pool copy blocks in its byte copy until released; `fail` makes it fail then."""

    class Blocked:
        copying, release = threading.Event(), threading.Event()
        fail: str | None = None

    real_copy = pool_copies._copy_bytes

    def copy_bytes(*args, **kwargs):
        Blocked.copying.set()
        assert Blocked.release.wait(60)
        if Blocked.fail:
            raise OSError(Blocked.fail)
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(pool_copies, "_copy_bytes", copy_bytes)
    return Blocked


def deploy_in_thread(vm_id: int) -> VirtualMachine:
    try:
        return vm_deploy_on_host(vm_id=vm_id)
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_a_deploy_that_needs_a_copy_being_made_returns_and_the_copy_requeues_it(
    test_driver_cloud, account, user, zone, sent, blocked_copy
):
    template, pool = test_driver_cloud
    first, second = (
        vm_services.vm_deploy(
            name=n, template_id=template.pk, zone=zone, account=account, actor=user
        )
        for n in ("first", "second")
    )
    host_queue = second.host.queue
    sent.clear()
    with ThreadPoolExecutor(max_workers=1) as executor:
        copier = executor.submit(deploy_in_thread, first.pk)
        assert blocked_copy.copying.wait(30)
        copy = TemplatePoolRef.objects.get(template=template, pool=pool)

        started = time.monotonic()
        with CaptureQueriesContext(connection) as queries:
            waiting = vm_deploy_on_host(vm_id=second.pk)
        assert time.monotonic() - started < 5, "it returned without waiting for the copy"
        assert len(queries) < 40, "and without polling"
        assert not connection.in_atomic_block
        with transaction.atomic():  # nobody holds the copy's row lock while it is being made
            TemplatePoolRef.objects.select_for_update(nowait=True).get(pk=copy.pk)
        assert waiting.state == "STARTING"
        assert waiting.awaited_copy_id == copy.pk
        assert waiting.error_text == "waiting for the template's copy on pool 'pool-t'"
        assert deploys_in(sent) == [], "nothing re-queued before the copy is done"
        [(name, kwargs, queue, countdown)] = sent
        assert (name, kwargs, queue) == (
            "pool_copy_waiter_recheck_task",
            {"vm_id": second.pk},
            host_queue,
        )
        assert countdown >= 30, "the safety net re-checks at the lease's end, it does not poll"

        blocked_copy.release.set()
        assert copier.result(timeout=60).state == "RUNNING"

    assert deploys_in(sent) == [({"vm_id": second.pk}, host_queue)]
    deployed = vm_deploy_on_host(vm_id=second.pk)
    assert deployed.state == "RUNNING", deployed.error_text
    assert (deployed.awaited_copy_id, deployed.error_text) == (None, "")
    copy.refresh_from_db()
    assert (copy.state, copy.attempts) == ("DOWNLOADED", 1)
    assert backing_of(deployed.root_disk_path) == copy.install_path

    # A second delivery of the same task, and the waiter's late re-check, change nothing.
    assert vm_deploy_on_host(vm_id=second.pk).root_disk_path == deployed.root_disk_path
    assert vm_copy_wait_recheck(vm_id=second.pk).state == "RUNNING"
    assert len(list(Path(pool.path).iterdir())) == 3, "one copy and two overlays"


@pytest.mark.django_db(transaction=True)
def test_a_failed_copy_moves_its_waiters_to_error_with_its_reason(
    test_driver_cloud, account, user, zone, sent, blocked_copy
):
    template, pool = test_driver_cloud
    first, second = (
        vm_services.vm_deploy(
            name=n, template_id=template.pk, zone=zone, account=account, actor=user
        )
        for n in ("first", "second")
    )
    sent.clear()
    blocked_copy.fail = "No space left on device"
    with ThreadPoolExecutor(max_workers=1) as executor:
        copier = executor.submit(deploy_in_thread, first.pk)
        assert blocked_copy.copying.wait(30)
        assert vm_deploy_on_host(vm_id=second.pk).state == "STARTING"
        blocked_copy.release.set()
        assert copier.result(timeout=60).state == "ERROR"

    [(kwargs, queue)] = deploys_in(sent)
    assert (kwargs, queue) == ({"vm_id": second.pk, "waited_for_attempt": 1}, second.host.queue)
    failed = vm_deploy_on_host(**kwargs)
    assert failed.state == "ERROR"
    assert failed.error_text == "No space left on device"
    copy = TemplatePoolRef.objects.get(template=template, pool=pool)
    assert (copy.state, copy.attempts) == ("DOWNLOAD_ERROR", 1), "the waiter did not retry it"

    # The next deploy retries the copy.
    third = vm_services.vm_deploy(
        name="third", template_id=template.pk, zone=zone, account=account, actor=user
    )
    blocked_copy.fail = None
    assert vm_deploy_on_host(vm_id=third.pk).state == "RUNNING"
    copy.refresh_from_db()
    assert (copy.state, copy.attempts) == ("DOWNLOADED", 2)


def copy_held_by_a_dead_worker(template, pool, *, expires_in: float) -> TemplatePoolRef:
    """A copy row as a worker killed mid-copy leaves it (no LeaseKeeper renews its lease)."""
    copy = pool_copies.pool_copy_row(template.pk, pool.pk)
    TemplatePoolRef.objects.filter(pk=copy.pk).update(
        state="DOWNLOAD_IN_PROGRESS",
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() + timedelta(seconds=expires_in),
        attempts=1,
        volume_name=pool_copies.pool_volume_name(template),
    )
    return copy


@pytest.mark.django_db(transaction=True)
def test_a_waiter_whose_copy_owner_died_takes_the_copy_over(
    test_driver_cloud, account, user, zone, sent
):
    template, pool = test_driver_cloud
    copy = copy_held_by_a_dead_worker(template, pool, expires_in=60)
    vm = vm_services.vm_deploy(
        name="w", template_id=template.pk, zone=zone, account=account, actor=user
    )
    sent.clear()
    assert vm_deploy_on_host(vm_id=vm.pk).state == "STARTING"
    [(name, kwargs, _, countdown)] = sent
    assert (name, kwargs) == ("pool_copy_waiter_recheck_task", {"vm_id": vm.pk})
    assert 55 <= countdown <= 65, "at the end of the lease"

    # Early (the lease still runs): it goes on waiting, re-checked at the lease's end.
    sent.clear()
    assert vm_copy_wait_recheck(vm_id=vm.pk).state == "STARTING"
    assert [call[0] for call in sent] == ["pool_copy_waiter_recheck_task"]
    assert VirtualMachine.objects.get(pk=vm.pk).awaited_copy_id == copy.pk

    TemplatePoolRef.objects.filter(pk=copy.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    done = vm_copy_wait_recheck(vm_id=vm.pk)
    assert done.state == "RUNNING", done.error_text
    copy.refresh_from_db()
    assert (copy.state, copy.attempts, copy.lease_owner) == ("DOWNLOADED", 2, "")
    assert backing_of(done.root_disk_path) == copy.install_path


@pytest.mark.django_db(transaction=True)
def test_the_next_deploy_takes_over_a_dead_copy_and_releases_its_waiters(
    test_driver_cloud, account, user, zone, sent
):
    template, pool = test_driver_cloud
    copy = copy_held_by_a_dead_worker(template, pool, expires_in=60)
    waiter = vm_services.vm_deploy(
        name="w", template_id=template.pk, zone=zone, account=account, actor=user
    )
    assert vm_deploy_on_host(vm_id=waiter.pk).state == "STARTING"
    TemplatePoolRef.objects.filter(pk=copy.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    sent.clear()

    later = vm_services.vm_deploy(
        name="later", template_id=template.pk, zone=zone, account=account, actor=user
    )
    assert vm_deploy_on_host(vm_id=later.pk).state == "RUNNING"
    assert deploys_in(sent)[-1] == ({"vm_id": waiter.pk}, waiter.host.queue)
    assert vm_deploy_on_host(vm_id=waiter.pk).state == "RUNNING"
    assert vm_copy_wait_recheck(vm_id=waiter.pk).state == "RUNNING", "its re-check: nothing"
    copy.refresh_from_db()
    assert (copy.state, copy.attempts) == ("DOWNLOADED", 2)


@pytest.mark.django_db(transaction=True)
def test_a_rebuild_waits_on_a_copy_being_made_and_is_requeued_by_its_finish(
    test_driver_cloud, account, user, zone, sent
):
    from agents_app.agent.vms import vm_rebuild_on_host
    from templates_app.models import Event

    template, pool = test_driver_cloud
    vm = vm_services.vm_deploy(
        name="s", template_id=template.pk, zone=zone, account=account, actor=user
    )
    old_disk = vm_deploy_on_host(vm_id=vm.pk).root_disk_path
    vm_services.vm_stop(vm_id=vm.pk, actor=user)
    copy = TemplatePoolRef.objects.get(template=template, pool=pool)
    TemplatePoolRef.objects.filter(pk=copy.pk).update(  # another worker copies it again
        state="DOWNLOAD_IN_PROGRESS",
        lease_owner="other-worker",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )
    sent.clear()

    waiting = vm_rebuild_on_host(vm_id=vm.pk)
    assert (waiting.state, waiting.awaited_copy_id) == ("STOPPED", copy.pk)
    assert waiting.error_text == "rebuild: waiting for the template's copy on pool 'pool-t'"
    assert Path(old_disk).exists(), "nothing was touched yet"

    pool_copies._finish(copy.pk, "other-worker", path=copy.install_path, size=copy.size, physical=1)
    assert deploys_in(sent) == []
    assert (sent[-1][0], sent[-1][1:3]) == ("vm_rebuild_task", ({"vm_id": vm.pk}, vm.host.queue))
    rebuilt = vm_rebuild_on_host(vm_id=vm.pk)
    assert (rebuilt.state, rebuilt.error_text, rebuilt.awaited_copy_id) == ("STOPPED", "", None)
    assert backing_of(rebuilt.root_disk_path) == copy.install_path
    assert Event.objects.filter(
        object_uuid=vm.uuid, reason__startswith="root disk rebuilt"
    ).exists()


@pytest.fixture
def woken(test_driver_cloud, account, user, zone, sent):
    """Four VMs waiting to deploy on a DOWNLOADED pool copy, as a copy's finish leaves them."""
    template, pool = test_driver_cloud
    first = vm_services.vm_deploy(
        name="first", template_id=template.pk, zone=zone, account=account, actor=user
    )
    assert vm_deploy_on_host(vm_id=first.pk).state == "RUNNING"
    vms = [
        vm_services.vm_deploy(
            name=f"woken-{n}", template_id=template.pk, zone=zone, account=account, actor=user
        )
        for n in range(4)
    ]
    sent.clear()
    return [vm.pk for vm in vms]


def states_of(vm_ids) -> dict[int, tuple[str, str]]:
    rows = VirtualMachine.objects.filter(pk__in=vm_ids).values_list("pk", "state", "error_text")
    return {pk: (state, error) for pk, state, error in rows}


@pytest.mark.django_db(transaction=True)
def test_a_woken_batch_hands_a_vm_another_task_holds_to_its_own_deploy_task(woken, sent):
    from agents_app.agent.claims import vm_claim

    busy = woken[1]
    assert vm_claim(busy, "sync")
    deployed = tasks.vm_deploys_woken_task(vm_ids=woken)
    assert deployed == 3
    states = states_of(woken)
    assert states.pop(busy)[0] == "STARTING"
    assert {state for state, _ in states.values()} == {"RUNNING"}
    assert [kwargs["vm_id"] for kwargs, _ in deploys_in(sent)] == [busy]
    assert VirtualMachine.objects.get(pk=busy).host_task_name == "sync"  # left to its holder
    assert (
        not VirtualMachine.objects.filter(pk__in=woken).exclude(pk=busy).exclude(host_task_token="")
    )


@pytest.mark.django_db(transaction=True)
def test_one_failing_deploy_of_a_woken_batch_fails_alone(woken, monkeypatch):
    from agents_app.agent import virt

    failing = VirtualMachine.objects.get(pk=woken[2])
    real_define = virt.define_domain

    def define(conn, xml):
        if str(failing.uuid) in xml:
            raise virt.VirtError("cannot define domain: injected")
        return real_define(conn, xml)

    monkeypatch.setattr(virt, "define_domain", define)
    assert tasks.vm_deploys_woken_task(vm_ids=woken) == 3
    states = states_of(woken)
    assert states.pop(failing.pk) == ("ERROR", "cannot define domain: injected")
    assert {state for state, _ in states.values()} == {"RUNNING"}
    pool_dir = Path(failing.pool.path)
    assert not (pool_dir / f"vm-{failing.uuid}-root.qcow2").exists(), "nothing left on the host"
    assert not VirtualMachine.objects.filter(pk__in=woken).exclude(host_task_token="")


@pytest.mark.django_db(transaction=True)
def test_a_woken_batch_whose_results_cannot_be_recorded_leaves_no_vm_starting(woken, monkeypatch):
    from agents_app.agent import vms

    def refuse(events):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(vms, "record_events", refuse)
    tasks.vm_deploys_woken_task(vm_ids=woken)
    states = states_of(woken)
    assert {state for state, _ in states.values()} == {"ERROR"}
    assert all("the database went away" in error for _, error in states.values())
    assert not VirtualMachine.objects.filter(pk__in=woken).exclude(host_task_token="")


@pytest.mark.django_db(transaction=True)
def test_a_deploy_arriving_during_a_copy_waits_in_one_commit_without_a_claim(
    test_driver_cloud, account, user, zone, sent
):
    from templates_app import leases

    template, pool = test_driver_cloud
    owner = leases.new_owner()
    with transaction.atomic():
        claimed, ref = pool_copies._claim(template.pk, pool.pk, owner, waited_for_attempt=None)
    assert claimed and ref.state == "DOWNLOAD_IN_PROGRESS"
    vm = vm_services.vm_deploy(
        name="waiter", template_id=template.pk, zone=zone, account=account, actor=user
    )
    with CaptureQueriesContext(connection) as queries:
        waiting = vm_deploy_on_host(vm_id=vm.pk)
    statements = [q["sql"] for q in queries.captured_queries]
    assert (waiting.state, waiting.awaited_copy_id) == ("STARTING", ref.pk)
    assert statements.count("COMMIT") == 1, statements
    assert not any("host_task_token" in sql and sql.startswith("UPDATE") for sql in statements)
    assert not Path(pool.path, f"vm-{vm.uuid}-root.qcow2").exists()
    sent.clear()
    with transaction.atomic():
        pool_copies._finish(ref.pk, owner, path="/nowhere/copy.qcow2", size=1, physical=1)
    assert [kwargs["vm_id"] for kwargs, _ in deploys_in(sent)] == [vm.pk]  # woken once
