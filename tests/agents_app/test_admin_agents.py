"""Operator tools for hosts, primary pools, pool copies and snapshots: the admin and commands.

Admin actions and commands call the same services as the API. Copy tasks are only recorded.
"""

import re
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils.timezone import localtime

from agents_app.agent import heartbeat
from agents_app.agent.tasks import pool_copy_task
from agents_app.management.commands.list_hosts import heartbeat_age
from agents_app.models import (
    Host,
    PrimaryPool,
    TemplatePoolRef,
    VirtualMachine,
    VmPool,
    VmSnapshot,
)
from agents_app.pool_copies import pool_copy_set_pinned
from templates_app import services as template_services
from tests.templates_app.factories import ZoneFactory
from versions_app.services import template_version_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def host(zone):
    return heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")


@pytest.fixture
def pool(zone, host):
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-1", libvirt_pool_name="pool-1", path="/srv/pools/pool-1"
    )
    pool.hosts.add(host)
    return pool


@pytest.fixture
def queued(monkeypatch):
    calls = []
    monkeypatch.setattr(
        pool_copy_task, "apply_async", lambda **kwargs: calls.append(kwargs), raising=False
    )
    return calls


def admin_url(model: str, name: str, *args) -> str:
    return reverse(f"admin:agents_app_{model}_{name}", args=args)


def run_action(client, model: str, action: str, objects):
    return client.post(
        admin_url(model, "changelist"),
        {"action": action, "_selected_action": [obj.pk for obj in objects]},
        follow=True,
    )


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# Pages render ------------------------------------------------------------------------------


def test_every_page_renders(staff, host, pool, register, make_vm, user):
    template = register()
    pool_copy_set_pinned(template_id=template.pk, pool_id=pool.pk, pinned=True, actor=user)
    vm = make_vm(template)
    snapshot = VmSnapshot.objects.create(vm=vm, name="before-upgrade")
    copy = TemplatePoolRef.objects.get()
    pages = [
        admin_url("host", "changelist"),
        admin_url("host", "change", host.pk),
        admin_url("primarypool", "changelist"),
        admin_url("primarypool", "add"),
        admin_url("primarypool", "change", pool.pk),
        admin_url("templatepoolref", "changelist"),
        admin_url("templatepoolref", "change", copy.pk),
        admin_url("vmsnapshot", "changelist"),
        admin_url("vmsnapshot", "change", snapshot.pk),
        admin_url("virtualmachine", "changelist"),
        admin_url("virtualmachine", "change", vm.pk),
    ]
    for page in pages:
        assert staff.get(page).status_code == 200, page


def test_host_list_shows_state_heartbeat_and_uri(staff, host, pool):
    page = staff.get(admin_url("host", "changelist")).content.decode()
    assert "kvm-1" in page and "zone-a" in page and "test:///default" in page
    assert "pool-1" in page
    # The heartbeat with seconds and in words.
    stamp = localtime(host.last_heartbeat_at).strftime("%Y-%m-%d %H:%M:%S")
    assert re.search(rf"{stamp} <span[^>]*>\((just now|\d+ seconds? ago)\)", page), page[
        page.index("field-heartbeat") :
    ][:600]
    change = staff.get(admin_url("host", "change", host.pk))
    # Read-only: no form field for the state (or anything else) on the host's page.
    assert 'name="state"' not in change.content.decode()
    assert staff.get(admin_url("host", "add")).status_code == 403


def test_copy_list_shows_a_progress_bar(staff, register, pool):
    TemplatePoolRef.objects.create(template=register(), pool=pool)
    page = staff.get(admin_url("templatepoolref", "changelist")).content.decode()
    assert '<progress max="100" value="0"></progress>' in page


def test_vm_page_shows_its_snapshots(staff, register, make_vm):
    vm = make_vm(register())
    VmSnapshot.objects.create(vm=vm, name="before-upgrade", description="kernel 6.12")
    page = staff.get(admin_url("virtualmachine", "change", vm.pk)).content.decode()
    assert "before-upgrade" in page and "kernel 6.12" in page


# Actions -----------------------------------------------------------------------------------


def test_maintenance_actions(staff, host):
    response = run_action(staff, "host", "enter_maintenance_selected", [host])
    assert "In maintenance: 1." in messages_of(response)
    assert Host.objects.get(pk=host.pk).state == "MAINTENANCE"

    response = run_action(staff, "host", "enter_maintenance_selected", [host])
    assert any("cannot enter maintenance" in m for m in messages_of(response))

    response = run_action(staff, "host", "leave_maintenance_selected", [host])
    assert "Out of maintenance: 1." in messages_of(response)
    assert Host.objects.get(pk=host.pk).state == "DISCONNECTED"


def test_unpin_and_pin_actions(
    staff, register, pool, user, queued, django_capture_on_commit_callbacks
):
    template = register()
    pool_copy_set_pinned(template_id=template.pk, pool_id=pool.pk, pinned=True, actor=user)
    copy = TemplatePoolRef.objects.get()

    response = run_action(staff, "templatepoolref", "unpin_selected", [copy])
    assert "Unpinned: 1." in messages_of(response)
    assert TemplatePoolRef.objects.get().pinned is False

    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(staff, "templatepoolref", "pin_selected", [copy])
    assert "Pinned: 1." in messages_of(response)
    assert TemplatePoolRef.objects.get().pinned is True
    assert [(c["queue"], c["kwargs"]["pool_id"]) for c in queued] == [("host.kvm-1", pool.pk)]


def test_pool_form_creates_a_pool_with_its_hosts(staff, zone, host):
    data = {
        "name": "fast-ssd",
        "zone": zone.pk,
        "libvirt_pool_name": "fast-ssd",
        "pool_type": "dir",
        "path": "/srv/pools/fast-ssd",
        "hosts": [host.pk],
        "capacity_bytes": "",
        "cache_threshold_percent": 85,
    }
    response = staff.post(admin_url("primarypool", "add"), data, follow=True)
    assert response.status_code == 200
    pool = PrimaryPool.objects.get(name="fast-ssd")
    assert list(pool.hosts.all()) == [host]
    assert pool.cache_threshold_percent == 85


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cache_threshold_percent", 101, "less than or equal to 100"),
        ("cache_threshold_percent", 0, "greater than or equal to 1"),
        ("hosts", "STRANGER", "Not in zone"),
    ],
)
def test_pool_form_refuses_bad_input(staff, zone, field, value, message):
    stranger = heartbeat.host_register(
        name="kvm-b", zone=ZoneFactory(name="zone-b"), libvirt_uri="test:///default"
    )
    data = {
        "name": "fast-ssd",
        "zone": zone.pk,
        "libvirt_pool_name": "fast-ssd",
        "pool_type": "dir",
        "path": "/srv/pools/fast-ssd",
        "cache_threshold_percent": 80,
        field: [stranger.pk] if value == "STRANGER" else value,
    }
    response = staff.post(admin_url("primarypool", "add"), data)
    assert response.status_code == 200
    assert message in str(response.context["adminform"].form.errors[field])
    assert not PrimaryPool.objects.exists()


# Commands ----------------------------------------------------------------------------------


def test_prepare_template_by_pool_names(
    register, zone, host, pool, queued, django_capture_on_commit_callbacks
):
    template = register()
    second = PrimaryPool.objects.create(
        zone=zone, name="pool-2", libvirt_pool_name="p2", path="/p2"
    )
    second.hosts.add(host)

    with django_capture_on_commit_callbacks(execute=True):
        out = run("prepare_template", template.unique_name, "--pool", "pool-1", "--pool", "pool-2")

    assert "pool-1 (zone-a): pinned, NOT_DOWNLOADED, 0%" in out
    assert "pool-2 (zone-a): pinned" in out
    assert "pinned on 2 pool(s)" in out
    assert TemplatePoolRef.objects.filter(pinned=True).count() == 2
    assert len(queued) == 2


def test_prepare_template_by_zone_and_uuid(register, zone, pool, queued):
    template = register()
    out = run("prepare_template", str(template.uuid), "--zone", zone.name)
    assert "pinned on 1 pool(s)" in out
    assert TemplatePoolRef.objects.get().pinned is True


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["no-such-template", "--zone", "zone-a"], "template: no template"),
        (["TEMPLATE", "--pool", "nope"], "pool: no primary pool named 'nope'"),
        (["TEMPLATE", "--zone", "nowhere"], "zone: no zone named 'nowhere'"),
        (["TEMPLATE"], "one of the arguments --pool --zone is required"),
    ],
)
def test_prepare_template_errors_name_the_field(register, pool, args, error):
    template = register()
    args = [template.unique_name if a == "TEMPLATE" else a for a in args]
    with pytest.raises(CommandError, match=error):
        call_command("prepare_template", *args, stdout=StringIO())
    assert not TemplatePoolRef.objects.exists()


def test_prepare_template_refusal_from_the_service(register, host, pool, admin_user):
    from agents_app.host_services import host_enter_maintenance

    template = register()
    host_enter_maintenance(host_id=host.pk, actor=admin_user)
    with pytest.raises(CommandError, match="no Up host reaches pool 'pool-1'"):
        call_command(
            "prepare_template", template.unique_name, "--pool", "pool-1", stdout=StringIO()
        )


def test_list_hosts(host, pool, zone):
    heartbeat.host_register(name="kvm-2", zone=zone, libvirt_uri="qemu+ssh://kvm-2/system")
    Host.objects.filter(name="kvm-2").update(last_heartbeat_at=None)
    lines = run("list_hosts").splitlines()

    assert lines[0].split() == ["NAME", "ZONE", "STATE", "HEARTBEAT", "POOLS", "LIBVIRT", "URI"]
    kvm1 = lines[1].split()
    assert kvm1[:3] == ["kvm-1", "zone-a", "UP"] and kvm1[4:] == [
        "ago",
        "pool-1",
        "test:///default",
    ]
    assert kvm1[3].endswith("s")  # seconds ago
    assert lines[2].split() == ["kvm-2", "zone-a", "UP", "never", "-", "qemu+ssh://kvm-2/system"]
    assert lines[-1] == "(2 host(s))"


def test_heartbeat_age_is_readable():
    from datetime import datetime, timedelta

    now = datetime(2025, 1, 1, 12, 0, 0)
    assert heartbeat_age(None, now) == "never"
    assert heartbeat_age(now - timedelta(seconds=42), now) == "42s ago"
    assert heartbeat_age(now - timedelta(minutes=5, seconds=3), now) == "5m ago"
    assert heartbeat_age(now - timedelta(hours=3), now) == "3h ago"
    assert heartbeat_age(now - timedelta(days=2, hours=1), now) == "2d ago"


# VM pools: bad input is a form error, never a 500 -----------------------------------------


def vm_pool_data(template, zone, account, **changes) -> dict:
    data = {
        "name": "lab",
        "account": account.pk,
        "zone": zone.pk,
        "template": template.pk,
        "follow_channel": "",
        "size": 2,
        "vms-TOTAL_FORMS": 0,
        "vms-INITIAL_FORMS": 0,
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("size", [101, 0])
def test_vm_pool_form_refuses_a_size_out_of_range(staff, register, zone, account, size):
    template = register()

    response = staff.post(
        admin_url("vmpool", "add"), vm_pool_data(template, zone, account, size=size)
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["size"] and "1 to 100" in str(errors["size"])
    assert "1 to 100" in response.content.decode()
    assert not VmPool.objects.exists() and not VirtualMachine.objects.exists()


@pytest.mark.parametrize("retire", ["deactivate", "remove"])
def test_vm_pool_form_refuses_a_template_that_is_not_active(
    staff, register, zone, account, user, retire
):
    template = register()
    template_services.template_deactivate(template_id=template.pk, actor=user)
    if retire == "remove":
        template_services.gc_sweep(dry_run=False, template_ids=[template.pk], actor=user)
        template.refresh_from_db()
        assert template.state == "REMOVED"

    response = staff.post(admin_url("vmpool", "add"), vm_pool_data(template, zone, account))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["template"] and "Choose an ACTIVE template" in str(errors["template"])
    assert not VmPool.objects.exists()


def test_vm_pool_form_offers_active_templates_by_version(staff, register, user):
    base = register(name="ubuntu")
    retired = register(name="old-image")
    template_services.template_deactivate(template_id=retired.pk, actor=user)
    version = template_version_create(
        base_template_id=base.pk,
        actor=user,
        url="https://mirror.example/ubuntu-v2.qcow2",
        version_name="jammy refresh",
    )

    form = staff.get(admin_url("vmpool", "add")).context["adminform"].form
    labels = [label for value, label in form.fields["template"].choices if value]

    assert labels == ["ubuntu v1", "ubuntu v2 — jammy refresh"]
    assert version.version_label == "ubuntu v2 — jammy refresh"


def test_relative_times_read_as_words():
    from templates_app.admin import relative_time

    now = datetime(2026, 12, 3, 13, 0, 0, tzinfo=UTC)
    assert relative_time(now - timedelta(minutes=3, seconds=12), now) == "3\xa0minutes ago"
    assert relative_time(now + timedelta(hours=2), now) == "in 2\xa0hours"
    assert relative_time(now, now) == "just now"
    assert relative_time(None, now) == "—"
