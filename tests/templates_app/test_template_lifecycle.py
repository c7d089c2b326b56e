"""Seed 000: delete deactivates at once; only the sweep removes, and only when unused."""

import pytest
from django.db import transaction

from agents_app import services as vm_services
from agents_app.choices import VmState
from templates_app import services
from templates_app.choices import DownloadState, StoreRefState, TemplateState
from templates_app.errors import TemplateNotUsable, TransitionConflict
from templates_app.models import Event, Template, TemplateStoreRef

pytestmark = pytest.mark.django_db


def test_delete_deactivates_at_once_even_when_vms_use_it(register, make_vm, user):
    template = register()
    vm = make_vm(template)

    services.template_deactivate(template_id=template.pk, actor=user)

    template.refresh_from_db()
    assert template.state == TemplateState.INACTIVE
    assert template.removed_at is None
    # The existing VM keeps working: stop/start still go through.
    vm_services.vm_start(vm_id=vm.pk, actor=user)
    vm_services.vm_stop(vm_id=vm.pk, actor=user)


def test_inactive_template_refuses_new_vms(register, make_vm, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)

    with pytest.raises(TemplateNotUsable, match="INACTIVE"):
        make_vm(template)


def test_sweep_keeps_a_template_while_any_vm_is_not_expunged(register, make_vm, user):
    template = register()
    vm = make_vm(template)
    services.template_deactivate(template_id=template.pk, actor=user)
    vm_services.vm_destroy(vm_id=vm.pk, actor=user)

    result = services.gc_sweep()

    template.refresh_from_db()
    assert template.state == TemplateState.INACTIVE, "a destroyed VM can be recovered"
    assert result.held_count == 1
    assert result.held[0]["references"]["destroyed_vm"] == 1

    vm_services.vm_expunge(vm_id=vm.pk, actor=user)
    result = services.gc_sweep()

    template.refresh_from_db()
    assert template.state == TemplateState.REMOVED
    assert template.removed_at is not None
    assert result.removed_count == 1


def test_sweep_deletes_bytes_from_every_store(register, user, store):
    template = register()
    ref = TemplateStoreRef.objects.get(template=template)
    folder = f"template/tmpl/{template.account_id}/{template.pk}"
    image = f"{folder}/{template.unique_name}.qcow2"
    (store_path := __import__("pathlib").Path(store.path) / folder).mkdir(parents=True)
    (store_path / f"{template.unique_name}.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 64)
    (store_path / "template.properties").write_text("uniquename=x\n")
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        install_path=image,
        download_state=DownloadState.DOWNLOADED,
        state=StoreRefState.READY,
        physical_size=68,
    )
    services.template_deactivate(template_id=template.pk, actor=user)

    result = services.gc_sweep()

    assert result.copies_destroyed == 1
    assert not store_path.exists()
    ref.refresh_from_db()
    assert ref.state == StoreRefState.DESTROYED


def test_sweep_never_touches_active_templates(register):
    template = register()
    services.gc_sweep()
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE


def test_dry_run_changes_nothing_and_says_what_holds_the_rest(register, make_vm, user):
    held = register(name="held")
    make_vm(held)
    free = register(name="free")
    for template in (held, free):
        services.template_deactivate(template_id=template.pk, actor=user)

    result = services.gc_sweep(dry_run=True)

    assert [r["name"] for r in result.removed] == ["free"]
    assert [(h["name"], h["references"]["vm"]) for h in result.held] == [("held", 1)]
    assert set(Template.objects.values_list("state", flat=True)) == {TemplateState.INACTIVE}


def test_reactivate_before_removal_and_not_after(register, user, admin_user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)
    services.template_reactivate(template_id=template.pk, actor=admin_user)
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE

    services.template_deactivate(template_id=template.pk, actor=user)
    services.gc_sweep()
    with pytest.raises(TransitionConflict, match="REMOVED"):
        services.template_reactivate(template_id=template.pk, actor=admin_user)


def test_every_change_is_an_event_with_who_and_why(register, make_vm, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)
    services.gc_sweep()

    events = list(
        Event.objects.filter(object_uuid=template.uuid)
        .order_by("id")
        .values_list("from_state", "to_state", "actor_label")
    )
    assert events == [
        ("", "ACTIVE", "alice"),
        ("ACTIVE", "INACTIVE", "alice"),
        ("INACTIVE", "REMOVED", "gc-sweep"),
    ]


def test_deleting_an_unused_template_queues_a_sweep_only_after_commit(
    register, user, django_capture_on_commit_callbacks, monkeypatch
):
    from templates_app import tasks

    sent = []
    monkeypatch.setattr(tasks.gc_sweep_task, "delay", lambda **kw: sent.append(kw))
    template = register()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.template_deactivate(template_id=template.pk, actor=user)
    assert sent == [], "nothing before commit"
    for callback in callbacks:
        callback()
    assert sent == [{"template_ids": [template.pk]}]


def test_nothing_is_queued_from_a_rolled_back_delete(register, user, monkeypatch):
    from templates_app import tasks

    sent = []
    monkeypatch.setattr(tasks.gc_sweep_task, "delay", lambda **kw: sent.append(kw))
    template = register()

    with pytest.raises(RuntimeError), transaction.atomic():
        services.template_deactivate(template_id=template.pk, actor=user)
        raise RuntimeError("rolled back")

    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE
    assert sent == []


def test_template_count_is_charged_and_released(register, account, user):
    account.max_templates = 1
    account.save()
    template = register()
    from templates_app.errors import LimitExceeded

    with pytest.raises(LimitExceeded, match="1 of 1"):
        register(name="second")
    assert Template.objects.count() == 1, "a refused registration leaves nothing"

    services.template_deactivate(template_id=template.pk, actor=user)
    register(name="second")
    account.refresh_from_db()
    assert account.used_templates == 1


def test_vm_states_that_count_as_references(register, make_vm, user):
    template = register()
    vm = make_vm(template)
    services.template_deactivate(template_id=template.pk, actor=user)
    for step in ("vm_destroy", "vm_recover"):
        getattr(vm_services, step)(vm_id=vm.pk, actor=user)
        services.gc_sweep()
        template.refresh_from_db()
        assert template.state == TemplateState.INACTIVE
    vm.refresh_from_db()
    assert vm.state == VmState.STOPPED
