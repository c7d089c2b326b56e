"""The admin's "Deploy VM" form: it calls vm_deploy; refusals come back on the field named."""

import pytest
from django.urls import reverse

from agents_app.agent import heartbeat
from agents_app.choices import VmState
from agents_app.models import PrimaryPool, VirtualMachine
from templates_app.models import Account

pytestmark = pytest.mark.django_db

DEPLOY = "/admin/agents_app/virtualmachine/deploy/"


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def pool(zone):
    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-1", libvirt_pool_name="pool-1", path="/srv/pools/pool-1"
    )
    pool.hosts.add(host)
    return pool


def form(template, zone, account, **overrides) -> dict:
    data = {
        "name": "web-1",
        "template": template.pk,
        "zone": zone.pk,
        "account": account.pk,
        "memory_mib": 256,
        "vcpus": 1,
    }
    data.update(overrides)
    return data


def test_the_vm_list_links_to_the_form_which_tells_versions_apart(staff, register, user):
    from versions_app.services import template_version_create

    base = register(name="ubuntu")
    template_version_create(
        base_template_id=base.pk, actor=user, version_name="patched", url="https://m.example/2"
    )

    assert (
        DEPLOY in staff.get(reverse("admin:agents_app_virtualmachine_changelist")).content.decode()
    )
    html = staff.get(DEPLOY).content.decode()
    assert "ubuntu v1" in html and "ubuntu v2 — patched" in html


def test_deploy_from_the_form(staff, register, zone, account, pool):
    template = register()

    response = staff.post(DEPLOY, form(template, zone, account), follow=True)

    vm = VirtualMachine.objects.get(name="web-1")
    assert (vm.state, vm.host.name, vm.pool) == (VmState.STARTING, "kvm-1", pool)
    assert response.redirect_chain[-1][0] == reverse(
        "admin:agents_app_virtualmachine_change", args=[vm.pk]
    )
    assert "is deploying on kvm-1" in response.content.decode()


def test_a_stateful_vm_following_latest_is_refused_on_the_follow_field(
    staff, register, zone, account, pool
):
    template = register()

    response = staff.post(DEPLOY, form(template, zone, account, follow="latest"))

    assert response.status_code == 400
    assert response.context["form"].errors == {
        "follow": ["only a stateless VM may follow the latest template version"]
    }
    assert not VirtualMachine.objects.exists()


def test_stateless_on_latest(staff, register, zone, account, pool):
    template = register()

    staff.post(DEPLOY, form(template, zone, account, stateless="on", follow="latest"))

    vm = VirtualMachine.objects.get()
    assert (vm.stateless, vm.follow_channel) == (True, "latest")


def test_limit_and_capacity_refusals_name_their_field(staff, register, zone, account):
    template = register()
    Account.objects.filter(pk=account.pk).update(max_vms=0)

    limited = staff.post(DEPLOY, form(template, zone, account))
    assert limited.status_code == 400
    assert list(limited.context["form"].errors) == ["account"]

    Account.objects.filter(pk=account.pk).update(max_vms=None)
    no_host = staff.post(DEPLOY, form(template, zone, account))
    assert "no Up host" in str(no_host.context["form"].non_field_errors())
    assert not VirtualMachine.objects.exists()


def test_missing_fields_are_a_400(staff):
    response = staff.post(DEPLOY, {})

    assert response.status_code == 400
    assert {"name", "template", "zone", "account"} <= set(response.context["form"].errors)


def test_tenants_cannot_deploy_here(client, user, register, zone, account, pool):
    client.force_login(user)

    response = client.post(DEPLOY, form(register(), zone, account))

    assert response.status_code == 302
    assert not VirtualMachine.objects.exists()
