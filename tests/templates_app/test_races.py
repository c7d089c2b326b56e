"""Races run for real: threads on separate PostgreSQL connections, many iterations.

Invariants (seed 000): never a VM on a REMOVED template, never a new VM on an INACTIVE one,
never a REMOVED template that still has a live reference.
"""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from agents_app import services as vm_services
from agents_app.models import VirtualMachine
from templates_app import services
from templates_app.errors import StencilError
from templates_app.models import Event, Template

pytestmark = pytest.mark.django_db(transaction=True)

ITERATIONS = 40


def run_together(*steps: Callable[[], object]) -> list[object]:
    """Start every step at the same instant, each on its own connection; return results/errors."""
    barrier = threading.Barrier(len(steps))

    def run(step):
        try:
            barrier.wait()
            return step()
        except StencilError as exc:
            return exc
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        return list(pool.map(run, steps))


def assert_invariants() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM templates_app_template t
            WHERE t.state = 'REMOVED' AND EXISTS (
                SELECT 1 FROM agents_app_virtualmachine v
                WHERE v.template_id = t.id AND v.state <> 'EXPUNGED')
            """
        )
        assert cursor.fetchone()[0] == 0, "a REMOVED template still has a live reference"


def created_after_deactivation(vm: VirtualMachine) -> bool:
    """Events are written under the template's row lock, so their ids follow lock order."""
    deactivated = (
        Event.objects.filter(object_uuid=vm.template.uuid, to_state="INACTIVE")
        .order_by("id")
        .first()
    )
    created = Event.objects.get(object_uuid=vm.uuid, to_state="STOPPED", from_state="")
    return deactivated is not None and created.id > deactivated.id


def test_deploy_vs_delete_vs_sweep(register, account, user, zone):
    outcomes = {"vm_won": 0, "delete_won": 0}
    for i in range(ITERATIONS):
        template = register(name=f"race-{i}")

        vm, deleted, _ = run_together(
            lambda t=template, i=i: vm_services.vm_create(
                name=f"vm-{i}", template_id=t.pk, zone=zone, account=account, actor=user
            ),
            lambda t=template: services.template_deactivate(template_id=t.pk, actor=user),
            lambda t=template: services.gc_sweep(template_ids=[t.pk]),
        )
        # A sweep after both have landed must still respect the VM.
        services.gc_sweep(template_ids=[template.pk])
        template.refresh_from_db()
        if isinstance(vm, VirtualMachine):
            outcomes["vm_won"] += 1
            assert template.state == "INACTIVE"
            assert not created_after_deactivation(vm)
        else:
            outcomes["delete_won"] += 1
            # Refused as INACTIVE, or as REMOVED when the sweep also got in first.
            assert "INACTIVE" in str(vm) or "REMOVED" in str(vm)
            assert template.state == "REMOVED"
        assert_invariants()
    assert sum(outcomes.values()) == ITERATIONS


def test_reactivate_and_deploy_vs_sweep(register, account, user, admin_user, zone):
    for i in range(ITERATIONS):
        template = register(name=f"race-{i}")
        services.template_deactivate(template_id=template.pk, actor=user)

        def reactivate_then_deploy(t=template, i=i):
            services.template_reactivate(template_id=t.pk, actor=admin_user)
            return vm_services.vm_create(
                name=f"vm-{i}", template_id=t.pk, zone=zone, account=account, actor=user
            )

        vm, _ = run_together(
            reactivate_then_deploy,
            lambda t=template: services.gc_sweep(template_ids=[t.pk]),
        )
        template.refresh_from_db()
        if isinstance(vm, VirtualMachine):
            assert template.state == "ACTIVE"
        else:
            assert template.state == "REMOVED"
            assert not VirtualMachine.objects.filter(template=template).exists()
        assert_invariants()


def test_expunging_the_last_vm_vs_a_new_deploy_vs_sweep(register, make_vm, account, user, zone):
    """The last reference goes while another deploy is attempted on the now INACTIVE template."""
    for i in range(ITERATIONS // 2):
        template = register(name=f"race-{i}")
        old = make_vm(template, name=f"old-{i}")
        services.template_deactivate(template_id=template.pk, actor=user)

        _, new_vm, _ = run_together(
            lambda vm=old: vm_services.vm_destroy(vm_id=vm.pk, actor=user, expunge=True),
            lambda t=template, i=i: vm_services.vm_create(
                name=f"new-{i}", template_id=t.pk, zone=zone, account=account, actor=user
            ),
            lambda t=template: services.gc_sweep(template_ids=[t.pk]),
        )
        assert not isinstance(new_vm, VirtualMachine), "a new VM on an INACTIVE template"
        services.gc_sweep(template_ids=[template.pk])
        assert Template.objects.get(pk=template.pk).state == "REMOVED"
        assert_invariants()


def test_many_sweeps_at_once_remove_each_template_once(register, user):
    templates = [register(name=f"t{i}") for i in range(30)]
    for template in templates:
        services.template_deactivate(template_id=template.pk, actor=user)

    results = run_together(*[lambda: services.gc_sweep(batch_size=7) for _ in range(4)])

    assert sum(r.removed_count for r in results) == 30
    assert set(Template.objects.values_list("state", flat=True)) == {"REMOVED"}
    assert Event.objects.filter(to_state="REMOVED").count() == 30


def test_a_version_waiting_on_a_slow_host_check_does_not_block_a_deploy(
    register, zone, account, user, settings, monkeypatch
):
    """The host's URL check of a new direct-download version runs before the base is locked:
    a deploy of the base (which takes the base's row lock FOR SHARE) goes on meanwhile."""
    from templates_app import url_checks
    from versions_app.services import template_version_create

    base = register(direct_download=True, checksum="{SHA-256}" + "a" * 64)
    settings.STENCIL_DIRECT_DOWNLOAD_URL_CHECK = True
    checking, answer = threading.Event(), threading.Event()

    def slow_host_check(**kwargs):
        checking.set()
        assert answer.wait(10), "the test never released the host"
        return {"checks": [{"ok": True, "size": 1, "virtual_size": 1}]}

    monkeypatch.setattr(url_checks, "_checker", [slow_host_check])

    def new_version():
        try:
            return template_version_create(base_template_id=base.pk, actor=user)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(new_version)
        assert checking.wait(10), "the version never asked the host"
        deployed = run_with_deadline(
            lambda: vm_services.vm_create(
                name="meanwhile", template_id=base.pk, zone=zone, account=account, actor=user
            ),
            seconds=5,
        )
        answer.set()
        version = pending.result(timeout=10)
    assert deployed.template_id == base.pk
    assert version.version_number == 2


def run_with_deadline(step: Callable[[], object], *, seconds: float):
    """Run `step` on its own connection; fail if it does not finish in time (it is blocked)."""

    def run():
        try:
            return step()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result(timeout=seconds)
