"""Nothing stays stuck (host tasks): an unexpected exception ends in the object's error state
with its text; a duplicate delivery is a no-op (the host task claim); the heartbeat reconciles
VM states with libvirt. All on the test driver."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from agents_app import services as vm_services
from agents_app.agent import heartbeat, tasks, virt, vms
from agents_app.agent.claims import VmBusy, vm_claim
from agents_app.models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine
from templates_app.copies import store_copy_download
from templates_app.models import Event, TemplateStoreRef
from tests import libvirt_backends

from .test_deploy import image_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


@pytest.fixture
def cloud(register, image_server, zone, tmp_path, settings):  # noqa: F811
    settings.STENCIL_VM_RECONCILE_GRACE_SECONDS = 0
    with libvirt_backends.open_backend("test", tmp_path) as backend:
        url, checksum = image_server
        template = register(url=url, checksum=checksum)
        store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
        host = heartbeat.host_register(name="kvm-f", zone=zone, libvirt_uri=backend.uri)
        pool = PrimaryPool.objects.create(
            zone=zone,
            name="pool-f",
            libvirt_pool_name=backend.pool_name,
            path=str(backend.pool_dir),
        )
        pool.hosts.add(host)
        yield template, host, pool, backend


@pytest.fixture
def deploy(cloud, zone, account, user, monkeypatch):
    """vm_deploy without the broker: the host task is run by the test."""
    template, *_ = cloud
    monkeypatch.setattr(tasks.vm_deploy_task, "apply_async", lambda **kwargs: None)

    def _deploy(name="web"):
        return vm_services.vm_deploy(
            name=name,
            template_id=template.pk,
            zone=zone,
            account=account,
            actor=user,
            memory_mib=64,
        )

    return _deploy


@pytest.fixture
def running(deploy):
    vm = vms.vm_deploy_on_host(vm_id=deploy().pk)
    assert vm.state == "RUNNING", vm.error_text
    return vm


def files_in(pool_dir: Path) -> list[str]:
    return sorted(p.name for p in pool_dir.iterdir())


def boom(exc=None):
    def fail(*args, **kwargs):
        raise exc or RuntimeError("boom")

    return fail


# 1. Unexpected exceptions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, exc, text",
    [
        ("define_domain", RuntimeError("boom"), "RuntimeError: boom"),
        ("write_overlay", UnicodeEncodeError("ascii", "é", 0, 1, "no"), "UnicodeEncodeError: "),
    ],
)
def test_deploy_task_failing_unexpectedly_ends_in_error_with_no_file(
    cloud, deploy, monkeypatch, target, exc, text
):
    *_, pool, backend = cloud
    vm = deploy()
    monkeypatch.setattr(virt, target, boom(exc))

    answer = tasks.vm_deploy_task(vm_id=vm.pk)

    vm.refresh_from_db()
    assert vm.state == "ERROR"
    assert vm.error_text.startswith(text)
    assert answer == "ERROR"
    assert vm.host_task_token == ""
    copy = TemplatePoolRef.objects.get(pool=pool)
    assert files_in(backend.pool_dir) == [copy.volume_name], "no root volume left"
    assert virt.domain_state(backend.connection(), vms.domain_name(vm)) == "missing"


def test_pool_copy_failing_unexpectedly_is_download_error_lease_released_no_file(
    cloud, monkeypatch
):
    template, host, pool, backend = cloud

    def partial_then_boom(conn, pool_name, vol_name, **kwargs):
        (backend.pool_dir / vol_name).write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(virt, "write_full_copy", partial_then_boom)

    answer = tasks.pool_copy_task(
        template_id=template.pk, pool_id=pool.pk, libvirt_uri=backend.uri, host_name=host.name
    )

    ref = TemplatePoolRef.objects.get(pool=pool)
    assert answer == "failed: RuntimeError: disk on fire"
    assert ref.state == "DOWNLOAD_ERROR"
    assert ref.error_text == "RuntimeError: disk on fire"
    assert (ref.lease_owner, ref.lease_expires_at) == ("", None)
    assert files_in(backend.pool_dir) == []


@pytest.mark.parametrize(
    "task, kwargs, state, text",
    [
        ("vm_sync_domain_task", {}, "ERROR", "sync: RuntimeError: boom"),
        ("vm_reboot_task", {}, "RUNNING", "reboot: RuntimeError: boom"),
        (
            "vm_snapshot_task",
            {"action": "create", "name": "s1"},
            "RUNNING",
            "snapshot create s1: RuntimeError: boom",
        ),
    ],
)
def test_vm_tasks_failing_unexpectedly_record_the_text(
    running, monkeypatch, task, kwargs, state, text
):
    for name in ("domain_state", "reboot_domain", "snapshot_list"):
        monkeypatch.setattr(virt, name, boom())

    getattr(tasks, task)(vm_id=running.pk, **kwargs)

    running.refresh_from_db()
    assert (running.state, running.error_text) == (state, text)
    assert running.host_task_token == ""


def test_rebuild_failing_unexpectedly_ends_in_error(running, user, monkeypatch):
    vm_services.vm_stop(vm_id=running.pk, actor=user)
    vms.vm_sync_domain(vm_id=running.pk)
    monkeypatch.setattr(virt, "undefine_domain", boom())

    tasks.vm_rebuild_task(vm_id=running.pk)

    running.refresh_from_db()
    assert running.state == "ERROR"
    assert running.error_text == "rebuild: RuntimeError: boom"


def test_an_error_vm_is_reset_to_stopped(running, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(virt, "domain_state", boom())
    tasks.vm_sync_domain_task(vm_id=running.pk)
    running.refresh_from_db()
    assert running.state == "ERROR"

    monkeypatch.undo()
    with django_capture_on_commit_callbacks() as sent:
        vm = vm_services.vm_reset(vm_id=running.pk, actor=None)
    assert len(sent) == 1, "the host powers the domain off"
    assert vm.state == "STOPPED"


def test_certificate_install_failing_unexpectedly_is_failed(zone, monkeypatch, settings, tmp_path):
    from agents_app.agent import trust
    from agents_app.certificates import certificate_upload
    from agents_app.models import HostCertificate

    from .test_certificates import ca_pem

    settings.STENCIL_AGENT_TRUST_ROOT = tmp_path / "trust"
    heartbeat.host_register(name="kvm-c", zone=zone, libvirt_uri="test:///default")
    monkeypatch.setattr(tasks.certificate_install_task, "apply_async", lambda **kw: None)
    cert = certificate_upload(alias="corp-ca", pem=ca_pem(), zone=zone, actor=None)
    monkeypatch.setattr(trust, "_write_certificate", boom(ValueError("bad bytes")))

    tasks.certificate_install_task(host_name="kvm-c", certificate_id=cert.pk)

    row = HostCertificate.objects.get(certificate=cert)
    assert row.state == "FAILED"
    assert row.error_text == "install corp-ca.pem: ValueError: bad bytes"


# 2. At most once ----------------------------------------------------------------------------


def test_a_duplicate_deploy_while_the_first_runs_changes_nothing(cloud, deploy, monkeypatch):
    """Redis redelivers a task still running after its visibility timeout: before the claim,
    the second delivery failed on the first one's volume and marked the healthy VM ERROR."""
    *_, backend = cloud
    vm = deploy()
    define = virt.define_domain
    duplicate = {}

    def define_with_a_duplicate_arriving(conn, xml):
        duplicate["vm"] = vms.vm_deploy_on_host(vm_id=vm.pk)
        return define(conn, xml)

    monkeypatch.setattr(virt, "define_domain", define_with_a_duplicate_arriving)

    done = vms.vm_deploy_on_host(vm_id=vm.pk)

    assert duplicate["vm"].state == "STARTING" and duplicate["vm"].error_text == ""
    assert (done.state, done.error_text) == ("RUNNING", "")
    names = [d.name() for d in backend.connection().listAllDomains(0)]
    assert names.count(vms.domain_name(vm)) == 1
    assert not Event.objects.filter(to_state="ERROR").exists()


def test_a_claim_whose_holder_died_is_taken_over(cloud, deploy):
    *_, backend = cloud
    vm = deploy()
    (backend.pool_dir / vms.root_volume_name(vm)).write_bytes(b"left by the dead attempt")
    VirtualMachine.objects.filter(pk=vm.pk).update(
        host_task_token="dead",
        host_task_name="deploy",
        host_task_expires_at=timezone.now() - timedelta(seconds=1),
    )

    done = vms.vm_deploy_on_host(vm_id=vm.pk)

    done.refresh_from_db()
    assert (done.state, done.error_text, done.host_task_token) == ("RUNNING", "", "")


def test_another_task_kind_waits_for_the_claim(running):
    assert vm_claim(running.pk, "snapshot create s1")
    with pytest.raises(VmBusy) as busy:
        vms.vm_sync_domain(vm_id=running.pk)
    assert 0 < busy.value.countdown <= 62
    running.refresh_from_db()
    assert (running.state, running.error_text) == ("RUNNING", "")


def test_visibility_timeout_is_above_the_longest_task(settings):
    from project import settings as project_settings

    assert project_settings.STENCIL_BROKER_VISIBILITY_TIMEOUT >= 7200
    if project_settings.CELERY_BROKER_URL.startswith("redis"):
        options = project_settings.CELERY_BROKER_TRANSPORT_OPTIONS
        assert options["visibility_timeout"] == project_settings.STENCIL_BROKER_VISIBILITY_TIMEOUT


# 3. The database tells the truth ------------------------------------------------------------


@pytest.mark.parametrize("behind_our_back, state", [("undefine", "ERROR"), ("destroy", "STOPPED")])
def test_heartbeat_reconcile_corrects_a_running_vm(cloud, running, behind_our_back, state):
    *_, backend = cloud
    dom = backend.connection().lookupByName(vms.domain_name(running))
    dom.destroy()
    if behind_our_back == "undefine":
        dom.undefine()

    report = heartbeat.vms_reconcile(host_name="kvm-f")

    running.refresh_from_db()
    assert report["corrected"] == [running.pk]
    assert running.state == state
    assert vms.domain_name(running) in running.error_text
    assert Event.objects.filter(object_id=running.pk, actor_label="reconciler").count() == 1
    assert heartbeat.vms_reconcile(host_name="kvm-f")["corrected"] == [], "once"


def test_reconcile_leaves_a_vm_a_host_task_holds(cloud, running):
    *_, backend = cloud
    backend.connection().lookupByName(vms.domain_name(running)).destroy()
    vm_claim(running.pk, "sync")

    assert heartbeat.vms_reconcile(host_name="kvm-f")["corrected"] == []


def test_a_domain_defined_behind_stencils_back_is_reported(cloud, running):
    *_, backend = cloud
    xml = virt.domain_xml(
        name="rogue",
        uuid="11111111-2222-3333-4444-555555555555",
        memory_mib=64,
        vcpus=1,
        disk_path=str(backend.pool_dir / "rogue.qcow2"),
        disk_format="qcow2",
        domain_type="test",
    )
    backend.connection().defineXML(xml).create()

    report = heartbeat.vms_reconcile(host_name="kvm-f")

    assert report == {"corrected": [], "unknown_domains": ["rogue"]}
    assert Host.objects.get(name="kvm-f").unknown_domains == ["rogue"]
    assert Event.objects.filter(reason__contains="unknown to Stencil: rogue").count() == 1


def test_starting_a_vm_whose_domain_is_gone_does_not_leave_it_running(cloud, running, user):
    *_, backend = cloud
    vm_services.vm_stop(vm_id=running.pk, actor=user)
    vms.vm_sync_domain(vm_id=running.pk)
    backend.connection().lookupByName(vms.domain_name(running)).undefine()
    vm_services.vm_start(vm_id=running.pk, actor=user)

    done = vms.vm_sync_domain(vm_id=running.pk)

    assert done.state == "ERROR"
    assert "is gone from host" in done.error_text


def test_unknown_domains_are_shown_to_staff_only(api, admin_api, zone):
    host = heartbeat.host_register(name="kvm-u", zone=zone, libvirt_uri="test:///default")
    Host.objects.filter(pk=host.pk).update(unknown_domains=["rogue"])

    staff = admin_api.get(f"/api/v1/hosts/{host.uuid}/").json()
    member = api.get(f"/api/v1/hosts/{host.uuid}/")

    assert staff["unknown_domains"] == ["rogue"]
    assert member.status_code != 200 or "unknown_domains" not in member.json()


@pytest.mark.django_db(transaction=True)
def test_a_host_task_arriving_as_the_deploy_commits_finds_the_vm_free(deploy):
    """The deploy's result and its claim's release commit together: a stop sent the moment the
    VM is RUNNING is carried out at once, not retried a claim length (60 s) later."""
    from django.db import transaction
    from django.db.models.signals import post_save

    vm = deploy()
    seen = {}

    def sync_claims_at_commit(sender, instance, **kwargs):
        if instance.pk == vm.pk and instance.state == "RUNNING":

            def claim_now():
                try:
                    seen["token"] = vm_claim(vm.pk, "sync")
                except VmBusy as exc:
                    seen["busy"] = exc

            transaction.on_commit(claim_now)

    post_save.connect(sync_claims_at_commit, sender=VirtualMachine)
    try:
        done = vms.vm_deploy_on_host(vm_id=vm.pk)
    finally:
        post_save.disconnect(sync_claims_at_commit, sender=VirtualMachine)

    assert done.state == "RUNNING"
    assert "busy" not in seen, seen
    done.refresh_from_db()
    assert done.host_task_token == seen["token"], "the deploy's exit left the new claim alone"
