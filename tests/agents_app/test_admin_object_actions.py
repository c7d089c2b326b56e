"""Buttons on VM, host and pool-copy pages (templates_app.admin_actions, compute's actions):
each calls its service; destroy, expunge and evict confirm on a page listing what they affect."""

import pytest
from django.urls import reverse

from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.choices import HostState, PoolCopyState, VmState
from agents_app.models import PrimaryPool, TemplatePoolRef, VmSnapshot
from agents_app.pool_copies import pool_copy_set_pinned
from templates_app.choices import TemplateState
from templates_app.models import Event, Template

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
def vm_on_host(register, make_vm, host, pool):
    """A STOPPED VM whose domain is on `host` (as after a deploy and a stop)."""
    vm = make_vm(register(name="ubuntu"), name="web-1")
    type(vm).objects.filter(pk=vm.pk).update(host=host, pool=pool, state=VmState.STOPPED)
    vm.refresh_from_db()
    return vm


def url(obj, name: str) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_action", args=[obj.pk, name])


def page_of(client, obj) -> str:
    opts = obj._meta
    return client.get(
        reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    ).content.decode()


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_vm_page_buttons_follow_its_state(staff, vm_on_host):
    html = page_of(staff, vm_on_host)

    for name in ("start", "snapshot", "create-version", "destroy"):
        assert url(vm_on_host, name) in html, name
    for name in ("stop", "reboot", "recover", "expunge", "revert"):
        assert url(vm_on_host, name) not in html, name


def test_start_stop_and_reboot_go_through_the_services(staff, vm_on_host):
    staff.post(url(vm_on_host, "start"))
    vm_on_host.refresh_from_db()
    assert vm_on_host.state == VmState.RUNNING

    response = staff.post(url(vm_on_host, "reboot"), follow=True)
    assert response.status_code == 200
    assert Event.objects.filter(object_id=vm_on_host.pk, reason__contains="reboot").exists()

    staff.post(url(vm_on_host, "stop"))
    vm_on_host.refresh_from_db()
    assert vm_on_host.state == VmState.STOPPED


def test_destroy_confirms_then_destroys_and_expunges(staff, vm_on_host, user):
    VmSnapshot.objects.create(vm=vm_on_host, name="before-upgrade")
    template = vm_on_host.template
    from templates_app import services

    services.template_deactivate(template_id=template.pk, actor=user)

    # The form first; then the confirmation listing the VM, its snapshot and the template.
    form = staff.post(url(vm_on_host, "destroy"), {"expunge": "on"})
    html = form.content.decode()
    assert "→ EXPUNGED (disk deleted, not recoverable)" in html
    assert "before-upgrade" in html and "tick “delete snapshot metadata”" in html
    assert "is INACTIVE" in html
    vm_on_host.refresh_from_db()
    assert vm_on_host.state == VmState.STOPPED

    refused = staff.post(url(vm_on_host, "destroy"), {"expunge": "on", "confirm": "yes"})
    assert refused.status_code == 409
    assert "has snapshots" in refused.content.decode()

    staff.post(
        url(vm_on_host, "destroy"),
        {"expunge": "on", "delete_snapshot_metadata": "on", "confirm": "yes"},
    )
    vm_on_host.refresh_from_db()
    assert vm_on_host.state == VmState.EXPUNGED


def test_destroy_then_recover(staff, vm_on_host):
    staff.post(url(vm_on_host, "destroy"), {"confirm": "yes"})
    vm_on_host.refresh_from_db()
    assert vm_on_host.state == VmState.DESTROYED
    assert url(vm_on_host, "recover") in page_of(staff, vm_on_host)

    staff.post(url(vm_on_host, "recover"))
    vm_on_host.refresh_from_db()
    assert vm_on_host.state == VmState.STOPPED


def test_snapshot_and_revert_forms_name_their_fields(staff, vm_on_host):
    bad = staff.post(url(vm_on_host, "snapshot"), {"name": "a/b"})
    assert bad.status_code == 400
    assert bad.context["form"].errors == {"name": ["1 to 128 characters, no '/'"]}

    ok = staff.post(url(vm_on_host, "snapshot"), {"name": "nightly"}, follow=True)
    assert any("Snapshot asked" in text for text in messages_of(ok))

    VmSnapshot.objects.create(vm=vm_on_host, name="nightly")
    form = staff.get(url(vm_on_host, "revert")).content.decode()
    assert "nightly" in form
    reverted = staff.post(url(vm_on_host, "revert"), {"name": "nightly"}, follow=True)
    assert any("Revert of" in text for text in messages_of(reverted))


def test_create_version_from_a_stopped_vm(staff, vm_on_host):
    response = staff.post(
        url(vm_on_host, "create-version"), {"version_name": "patched"}, follow=True
    )

    version = Template.objects.get(base=vm_on_host.template)
    assert (version.version_number, version.version_name) == (2, "patched")
    assert any("Version 2 of" in text for text in messages_of(response))


def test_host_maintenance_on_and_off(staff, host):
    staff.post(url(host, "enter-maintenance"))
    host.refresh_from_db()
    assert host.state == HostState.MAINTENANCE
    assert url(host, "leave-maintenance") in page_of(staff, host)

    staff.post(url(host, "leave-maintenance"))
    host.refresh_from_db()
    assert host.state != HostState.MAINTENANCE


def test_pool_copy_pin_unpin_and_evict(staff, register, pool, user):
    template = register()
    ref = pool_copy_set_pinned(template_id=template.pk, pool_id=pool.pk, pinned=True, actor=user)
    TemplatePoolRef.objects.filter(pk=ref.pk).update(
        state=PoolCopyState.DOWNLOADED, physical_size=7 * 1024 * 1024
    )
    assert url(ref, "unpin") in page_of(staff, ref)

    staff.post(url(ref, "unpin"))
    ref.refresh_from_db()
    assert not ref.pinned

    confirm = staff.get(url(ref, "evict")).content.decode()
    assert "DOWNLOADED → EVICTING → deleted" in confirm and "7.0\xa0MB" in confirm
    assert "Host kvm-1 deletes the volume" in confirm
    ref.refresh_from_db()
    assert ref.state == PoolCopyState.DOWNLOADED

    staff.post(url(ref, "evict"), {"confirm": "yes"})
    ref.refresh_from_db()
    assert ref.state == PoolCopyState.EVICTING
    assert url(ref, "pin") not in page_of(staff, ref), "an EVICTING copy offers no pin"


def test_a_pinned_copy_is_not_evicted(staff, register, pool, user):
    template = register()
    ref = pool_copy_set_pinned(template_id=template.pk, pool_id=pool.pk, pinned=True, actor=user)
    TemplatePoolRef.objects.filter(pk=ref.pk).update(state=PoolCopyState.DOWNLOADED)

    response = staff.post(url(ref, "evict"), {"confirm": "yes"}, follow=True)

    assert any("unpin it first" in text for text in messages_of(response))
    ref.refresh_from_db()
    assert ref.state == PoolCopyState.DOWNLOADED


def test_prepare_on_pools_from_the_template_page(staff, register, pool):
    template = register()

    missing = staff.post(url(template, "prepare"), {})
    assert missing.status_code == 400
    assert missing.context["form"].errors == {"pools": ["Choose pools or a zone."]}

    staff.post(url(template, "prepare"), {"zone": pool.zone_id})

    ref = TemplatePoolRef.objects.get(template=template, pool=pool)
    assert ref.pinned
    assert template.state == TemplateState.ACTIVE


def test_tenants_cannot_act_on_vms(client, vm_on_host, user):
    client.force_login(user)

    client.post(url(vm_on_host, "destroy"), {"expunge": "on", "confirm": "yes"})

    vm_on_host.refresh_from_db()
    assert vm_on_host.state == VmState.STOPPED


def test_vm_services_used_here_exist():
    # The buttons name these services; a rename must fail here, not on a click.
    for name in ("vm_start", "vm_stop", "vm_reboot", "vm_destroy", "vm_recover", "vm_expunge"):
        assert callable(getattr(vm_services, name))
