"""Compute's reaper: a pool copy with no live worker is DOWNLOAD_ERROR and its waiters are woken;
a VM deploy or rebuild past its deadline is ERROR (not while its copy is made under a live lease);
a certificate install the host never reported is re-queued once, then FAILED. Live ones are left
alone and a repeat run is a no-op."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app import reaper
from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.agent import tasks as host_tasks
from agents_app.agent.pool_copies import lease_length
from agents_app.agent.vms import _deploy_done, _deploy_failed, vm_deploy_on_host
from agents_app.models import (
    DirectDownloadCertificate,
    Host,
    HostCertificate,
    PrimaryPool,
    TemplatePoolRef,
    VirtualMachine,
)
from agents_app.tasks import reap_expired_task
from templates_app.models import Event

pytestmark = pytest.mark.django_db


def _recorder(calls: list, name: str):
    return lambda kwargs, queue, **_: calls.append((name, kwargs, queue))


@pytest.fixture
def sent(monkeypatch):
    """Host tasks sent after commit: (task name, kwargs, queue), not sent to a broker."""
    calls = []
    for task in (
        host_tasks.vm_deploy_task,
        host_tasks.vm_rebuild_task,
        host_tasks.certificate_install_task,
        host_tasks.certificate_remove_task,
    ):
        monkeypatch.setattr(task, "apply_async", _recorder(calls, task.name.rsplit(".", 1)[1]))
    return calls


@pytest.fixture
def cloud(zone, register):
    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-1", libvirt_pool_name="default-pool", path="/nonexistent"
    )
    pool.hosts.add(host)
    return register(), host, pool


@pytest.fixture
def deployed(cloud, account, user):
    """A VM whose deploy was sent to its host (STARTING, with a deadline)."""
    template, _host, _pool = cloud
    return vm_services.vm_deploy(
        name="vm-1",
        template_id=template.pk,
        zone=template.zones.first(),
        account=account,
        actor=user,
    )


def overdue(vm, *, by: float = 1) -> None:
    """The deadline passed `by` seconds ago and the host wrote nothing on the row since."""
    past = timezone.now() - reaper.vm_deadline() - timedelta(seconds=by)
    VirtualMachine.objects.filter(pk=vm.pk).update(
        transition_deadline=timezone.now() - timedelta(seconds=by), updated_at=past
    )


def copy_in_progress(template, pool, *, lease_left: timedelta, attempts: int = 1):
    ref = TemplatePoolRef.objects.create(template=template, pool=pool)
    TemplatePoolRef.objects.filter(pk=ref.pk).update(
        state="DOWNLOAD_IN_PROGRESS",
        lease_owner="copy-worker",
        lease_expires_at=timezone.now() + lease_left,
        attempts=attempts,
        volume_name="tmpl.qcow2",
    )
    return TemplatePoolRef.objects.get(pk=ref.pk)


def reap(capture):
    with capture(execute=True):
        return reaper.reap_expired()


def reaper_events(obj):
    return Event.objects.filter(object_id=obj.pk, actor_label="reaper")


# VMs -----------------------------------------------------------------------------------------


def test_a_deploy_gets_a_deadline_and_its_result_clears_it(deployed, settings):
    assert deployed.transition_action == "deploy"
    seconds = (deployed.transition_deadline - timezone.now()).total_seconds()
    assert seconds > settings.STENCIL_VM_TRANSITION_DEADLINE_SECONDS - 5

    vm = _deploy_failed(deployed.pk, "disk full")
    assert (vm.state, vm.transition_deadline, vm.transition_action) == ("ERROR", None, "")


def test_a_deploy_past_its_deadline_is_error_with_the_reason_and_an_event(
    deployed, sent, django_capture_on_commit_callbacks
):
    overdue(deployed)

    result = reap(django_capture_on_commit_callbacks)

    assert result.vms_failed == 1
    vm = VirtualMachine.objects.get(pk=deployed.pk)
    assert (vm.state, vm.transition_deadline, vm.transition_action) == ("ERROR", None, "")
    assert vm.error_text == "deploy did not finish: host kvm-1 (Up) recorded no result within 900 s"
    (event,) = reaper_events(vm)
    assert (event.from_state, event.to_state) == ("STARTING", "ERROR")
    assert sent == [], "not re-queued (see agents_app/reaper.py)"
    assert reaper.reap_expired().vms_failed == 0, "a repeat is a no-op"


def test_a_late_deploy_result_after_the_reaper_does_not_crash(deployed):
    overdue(deployed)
    reaper.reap_expired()
    vm = _deploy_done(deployed.pk, disk_path="/nonexistent/vm.qcow2", copy_id=None)
    assert (vm.state, vm.root_volume) == ("ERROR", "vm.qcow2"), "its disk is known, to clean"
    assert Event.objects.filter(object_id=vm.pk, reason="deployed after the VM became ERROR")


def test_a_deploy_within_its_deadline_is_left_alone(deployed):
    assert reaper.reap_expired().vms_failed == 0
    # past the deadline, but its host just recorded something (e.g. it waits on a copy)
    VirtualMachine.objects.filter(pk=deployed.pk).update(
        transition_deadline=timezone.now() - timedelta(seconds=1)
    )
    assert reaper.reap_expired().vms_failed == 0
    assert VirtualMachine.objects.get(pk=deployed.pk).state == "STARTING"


def test_a_vm_waiting_on_a_copy_with_a_live_lease_is_not_reaped(cloud, deployed):
    template, _host, pool = cloud
    ref = copy_in_progress(template, pool, lease_left=timedelta(seconds=30))
    VirtualMachine.objects.filter(pk=deployed.pk).update(awaited_copy=ref)
    overdue(deployed)

    assert reaper.reap_expired().as_dict()["vms_failed"] == 0
    vm = VirtualMachine.objects.get(pk=deployed.pk)
    assert (vm.state, vm.awaited_copy_id) == ("STARTING", ref.pk)


def test_a_user_stop_ends_the_deadline(deployed, user):
    vm = vm_services.vm_stop(vm_id=deployed.pk, actor=user)
    assert (vm.state, vm.transition_deadline) == ("STOPPED", None)
    assert reaper.reap_expired().vms_failed == 0


def test_a_rebuild_past_its_deadline_is_error(cloud, account, user, sent):
    template, host, pool = cloud
    vm = vm_services.vm_create(
        name="stateless",
        template_id=template.pk,
        zone=pool.zone,
        account=account,
        actor=user,
        stateless=True,
    )
    VirtualMachine.objects.filter(pk=vm.pk).update(host=host, pool=pool)
    vm = vm_services.vm_start(vm_id=vm.pk, actor=user)
    vm = vm_services.vm_stop(vm_id=vm.pk, actor=user)  # a stateless stop rebuilds its disk
    assert (vm.state, vm.transition_action) == ("STOPPED", "rebuild")
    overdue(vm)

    assert reaper.reap_expired().vms_failed == 1
    vm.refresh_from_db()
    assert vm.state == "ERROR"
    assert vm.error_text.startswith("rebuild did not finish: host kvm-1 (Up)")


# Pool copies ---------------------------------------------------------------------------------


def test_a_pool_copy_with_no_live_worker_fails_and_wakes_its_waiters(
    cloud, deployed, sent, django_capture_on_commit_callbacks
):
    template, host, pool = cloud
    ref = copy_in_progress(template, pool, lease_left=-lease_length() - timedelta(seconds=1))
    VirtualMachine.objects.filter(pk=deployed.pk).update(awaited_copy=ref)
    overdue(deployed)

    result = reap(django_capture_on_commit_callbacks)

    assert (result.pool_copies_failed, result.woken_vms, result.vms_failed) == (1, [deployed.pk], 0)
    ref.refresh_from_db()
    assert (ref.state, ref.lease_owner, ref.lease_expires_at) == ("DOWNLOAD_ERROR", "", None)
    assert ref.error_text.startswith("no worker finished the copy: its lease ran out at ")
    (event,) = reaper_events(ref)
    assert (event.from_state, event.to_state) == ("DOWNLOAD_IN_PROGRESS", "DOWNLOAD_ERROR")
    assert sent == [("vm_deploy_task", {"vm_id": deployed.pk, "waited_for_attempt": 1}, host.queue)]
    vm = VirtualMachine.objects.get(pk=deployed.pk)
    assert (vm.state, vm.awaited_copy_id) == ("STARTING", None), "woken, not failed by the reaper"

    # The woken deploy reports the copy's failure as its own error.
    vm = vm_deploy_on_host(vm_id=deployed.pk, waited_for_attempt=1)
    assert vm.state == "ERROR" and "no worker finished the copy" in vm.error_text

    again = reap(django_capture_on_commit_callbacks)
    assert (again.pool_copies_failed, again.vms_failed) == (0, 0)


def test_a_pool_copy_whose_lease_just_ran_out_is_left_to_its_waiters(cloud):
    template, _host, pool = cloud
    ref = copy_in_progress(template, pool, lease_left=timedelta(seconds=-5))

    assert reaper.reap_expired().pool_copies_failed == 0
    ref.refresh_from_db()
    assert ref.state == "DOWNLOAD_IN_PROGRESS"


def test_the_beat_task_runs_the_reaper(cloud):
    template, _host, pool = cloud
    copy_in_progress(template, pool, lease_left=-lease_length() - timedelta(seconds=1))
    assert reap_expired_task.run()["pool_copies_failed"] == 1


def test_batches_are_bounded(cloud, account, user):
    template, _host, pool = cloud
    vms = [
        vm_services.vm_deploy(
            name=f"vm-{n}", template_id=template.pk, zone=pool.zone, account=account, actor=user
        )
        for n in range(3)
    ]
    for vm in vms:
        overdue(vm)

    assert reaper.reap_expired(batch_size=2).vms_failed == 2
    assert reaper.reap_expired(batch_size=2).vms_failed == 1


# Certificates --------------------------------------------------------------------------------


@pytest.fixture
def pending_certificate(cloud, zone):
    _template, host, _pool = cloud
    now = timezone.now()
    cert = DirectDownloadCertificate.objects.create(
        alias="corp-ca",
        zone=zone,
        pem="-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
        subject="CN=corp",
        issuer="CN=corp",
        serial="01",
        not_before=now - timedelta(days=1),
        not_after=now + timedelta(days=1),
        fingerprint_sha256="00" * 32,
    )
    return HostCertificate.objects.create(certificate=cert, host=host)


def certificate_overdue(row) -> None:
    HostCertificate.objects.filter(pk=row.pk).update(
        updated_at=timezone.now() - reaper.certificate_deadline() - timedelta(seconds=1)
    )


def test_a_certificate_install_is_requeued_once_then_failed(
    pending_certificate, sent, django_capture_on_commit_callbacks
):
    row, host = pending_certificate, pending_certificate.host
    certificate_overdue(row)

    first = reap(django_capture_on_commit_callbacks)

    assert first.certificates_requeued == 1
    assert sent == [
        (
            "certificate_install_task",
            {"host_name": host.name, "certificate_id": row.certificate_id},
            host.queue,
        )
    ]
    row.refresh_from_db()
    assert (row.state, row.requeued_for) == ("PENDING", "PENDING")
    assert reap(django_capture_on_commit_callbacks).certificates_requeued == 0, "deadline anew"

    certificate_overdue(row)
    second = reap(django_capture_on_commit_callbacks)

    assert (second.certificates_requeued, second.certificates_failed) == (0, 1)
    assert len(sent) == 1
    row.refresh_from_db()
    assert row.state == "FAILED"
    assert row.error_text.startswith("install not reported by host kvm-1 (Up) within 600 s")
    assert [e.to_state for e in reaper_events(row).order_by("pk")] == ["PENDING", "FAILED"]
    assert reap(django_capture_on_commit_callbacks).certificates_failed == 0


def test_a_certificate_on_a_down_host_fails_at_once(pending_certificate, sent):
    Host.objects.filter(pk=pending_certificate.host_id).update(state="DOWN")
    certificate_overdue(pending_certificate)

    assert reaper.reap_expired().certificates_failed == 1
    pending_certificate.refresh_from_db()
    assert pending_certificate.state == "FAILED"
    assert "(Down)" in pending_certificate.error_text
    assert sent == []


def test_a_recent_certificate_install_is_left_alone(pending_certificate, sent):
    result = reaper.reap_expired()
    assert (result.certificates_requeued, result.certificates_failed) == (0, 0)
    pending_certificate.refresh_from_db()
    assert pending_certificate.state == "PENDING"
