"""An account's `max_vms` holds: through the API, for destroyed (recoverable) VMs, and when two
creates race on separate PostgreSQL connections; another account's VMs never count."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from agents_app import services as vm_services
from agents_app.models import VirtualMachine
from templates_app.errors import LimitExceeded

ITERATIONS = 10


def deploy_body(template, zone, name):
    return {"name": name, "template": str(template.uuid), "zone": str(zone.uuid), "deploy": False}


@pytest.mark.django_db
def test_the_vm_past_the_limit_is_a_400_naming_max_vms_and_nothing_is_written(
    register, api, other_api, account, other_account, zone
):
    account.max_vms = 2
    account.save()
    template = register(is_public=True)
    for name in ("a", "b"):
        assert (
            api.post("/api/v1/vms/", deploy_body(template, zone, name), format="json").status_code
            == 201
        )

    refused = api.post("/api/v1/vms/", deploy_body(template, zone, "c"), format="json")

    assert refused.status_code == 400
    assert "max_vms" in refused.data
    assert "2 of 2 VMs" in refused.data["max_vms"][0]
    assert VirtualMachine.objects.filter(account=account).count() == 2
    # The other account's own limit (none) is untouched by this account's use.
    assert (
        other_api.post("/api/v1/vms/", deploy_body(template, zone, "x"), format="json").status_code
        == 201
    )


@pytest.mark.django_db
def test_a_destroyed_vm_still_counts_until_it_is_expunged(register, make_vm, account, user, zone):
    account.max_vms = 1
    account.save()
    template = register()
    vm = make_vm(template, name="first")
    vm_services.vm_destroy(vm_id=vm.pk, actor=user)

    with pytest.raises(LimitExceeded) as refused:
        make_vm(template, name="second")

    assert refused.value.field == "max_vms"
    assert VirtualMachine.objects.filter(account=account).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_creates_racing_for_the_last_slot_get_one_vm(register, account, user, zone):
    account.max_vms = 1
    account.save()
    template = register()

    def create(name):
        def step():
            try:
                barrier.wait()
                return vm_services.vm_create(
                    name=name, template_id=template.pk, zone=zone, account=account, actor=user
                )
            except LimitExceeded as exc:
                return exc
            finally:
                connections.close_all()

        return step

    for iteration in range(ITERATIONS):
        VirtualMachine.objects.filter(account=account).delete()
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(
                pool.map(lambda s: s(), [create(f"a{iteration}"), create(f"b{iteration}")])
            )

        assert sorted(type(r).__name__ for r in results) == ["LimitExceeded", "VirtualMachine"]
        assert VirtualMachine.objects.filter(account=account).count() == 1


@pytest.mark.django_db(transaction=True)
def test_without_a_limit_creates_do_not_queue_on_the_account_row(register, account, user, zone):
    """An account with no max_vms has nothing to count: a create goes on while another
    transaction updates the account's row (an operator's edit: FOR NO KEY UPDATE, which the
    new VM's foreign key check does not conflict with). Before, every create took the row's
    FOR UPDATE lock, so concurrent deploys of one account also ran one at a time."""
    from django.db import transaction

    from templates_app.models import Account

    template = register()
    holding, release = threading.Event(), threading.Event()

    def hold_the_account_row():
        try:
            with transaction.atomic():
                Account.objects.select_for_update(no_key=True).get(pk=account.pk)
                holding.set()
                release.wait(30)
        finally:
            connections.close_all()

    def create():
        try:
            return vm_services.vm_create(
                name="free", template_id=template.pk, zone=zone, account=account, actor=user
            )
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        holder = pool.submit(hold_the_account_row)
        assert holding.wait(10)
        created = pool.submit(create)
        try:
            vm = created.result(timeout=5)
        finally:
            release.set()
        holder.result(timeout=10)
    assert vm.name == "free"
