"""The Django admin: what an operator sees and does. Every change goes through the services."""

import re
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from agents_app import services as vm_services
from agents_app.choices import VmState
from templates_app import services
from templates_app.choices import TemplateState
from templates_app.models import Event, GcSweepRun, Template, TemplateStoreRef

pytestmark = pytest.mark.django_db

CHECKSUM = "{SHA-256}" + "ab" * 32


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def url(name: str, *args) -> str:
    return reverse(f"admin:templates_app_template_{name}", args=args)


def action(name: str, *args) -> str:
    return reverse("admin:templates_app_template_action", args=[*args, name])


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def add_form_data(zone, account, **overrides) -> dict:
    data = {
        "name": "ubuntu-24.04",
        "display_text": "Ubuntu 24.04 LTS",
        "kind": "TEMPLATE",
        "format": "QCOW2",
        "url": "https://mirror.example/ubuntu-24.04.qcow2",
        "checksum": CHECKSUM,
        "os_type": "Ubuntu",
        "zones": [zone.pk],
        "account": account.pk,
        "primary_policy": "CACHE",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def change_form_data(response, **changes) -> dict:
    """What the browser would post back from a change page, with `changes` applied."""
    form = response.context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    for inline in response.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        data.update({management.add_prefix(k): v for k, v in management.initial.items()})
    data.update(changes)
    return data


def run_action(client, action: str, objects, model: str = "templates_app_template"):
    return client.post(
        reverse(f"admin:{model}_changelist"),
        # Destructive actions ask first (their page is tested in test_admin_actions.py).
        {"action": action, "_selected_action": [obj.pk for obj in objects], "confirm": "yes"},
        follow=True,
    )


# Registration and edits ------------------------------------------------------------------


def test_add_form_registers_a_template(staff, store, account, admin_user):
    response = staff.post(url("add"), add_form_data(store.zone, account), follow=True)

    assert response.status_code == 200
    assert "ubuntu-24.04" in response.content.decode()
    template = Template.objects.get(name="ubuntu-24.04")
    assert template.state == TemplateState.ACTIVE
    assert template.checksum == CHECKSUM
    assert list(template.zones.all()) == [store.zone]
    assert TemplateStoreRef.objects.filter(template=template, store=store).exists()
    event = Event.objects.get(object_id=template.pk, to_state=TemplateState.ACTIVE)
    assert event.actor == admin_user
    account.refresh_from_db()
    assert account.used_templates == 1


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"checksum": "{MD5}abc"}, "checksum", "MD5 checksum must have 32 hex digits, got 3"),
        ({"zones": []}, "zones", "give at least one zone, or cross_zones=true"),
        ({"kind": "ISO"}, "format", "an ISO must have format ISO"),
    ],
)
def test_add_form_shows_the_broken_rule_and_saves_nothing(
    staff, store, account, overrides, field, message
):
    response = staff.post(url("add"), add_form_data(store.zone, account, **overrides))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors[field] == [message]
    assert message in response.content.decode()
    assert not Template.objects.exists()
    assert not TemplateStoreRef.objects.exists()
    assert not Event.objects.exists()
    account.refresh_from_db()
    assert account.used_templates == 0


def test_add_form_shows_an_account_limit_on_the_account_field(staff, store, account):
    account.max_templates = 0
    account.save()

    response = staff.post(url("add"), add_form_data(store.zone, account))

    assert "0 of 0 templates allowed" in response.context["adminform"].form.errors["account"][0]
    assert not Template.objects.exists()


def test_change_form_edits_through_the_update_service(staff, register):
    template = register()
    page = staff.get(url("change", template.pk))

    data = change_form_data(page, name="debian-12-renamed", is_featured="on")
    response = staff.post(url("change", template.pk), data)

    assert response.status_code == 302
    template.refresh_from_db()
    assert template.name == "debian-12-renamed"
    assert template.is_featured
    assert template.state == TemplateState.ACTIVE


def test_a_removed_template_cannot_be_edited_or_deleted(staff, register, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)
    services.gc_sweep()

    response = staff.get(url("change", template.pk))

    assert "name" not in response.context["adminform"].form.fields
    assert "REMOVED" in response.content.decode()
    assert staff.get(url("delete", template.pk)).status_code == 403


# Life-cycle buttons ----------------------------------------------------------------------


def test_deactivate_button_makes_the_template_inactive(staff, register, admin_user):
    template = register()

    response = staff.post(action("deactivate", template.pk), {"confirm": "yes"}, follow=True)

    assert response.redirect_chain[-1][0] == url("change", template.pk)
    template.refresh_from_db()
    assert template.state == TemplateState.INACTIVE
    assert template.removed_at is None
    assert any("is now INACTIVE" in text for text in messages_of(response))
    html = response.content.decode()
    assert action("reactivate", template.pk) in html
    assert action("deactivate", template.pk) not in html
    event = Event.objects.filter(object_id=template.pk).first()
    assert (event.to_state, event.actor) == (TemplateState.INACTIVE, admin_user)


def test_reactivate_button_makes_it_active_again(staff, register, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)

    response = staff.post(action("reactivate", template.pk), follow=True)

    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE
    assert any("is now ACTIVE" in text for text in messages_of(response))


def test_reactivating_a_removed_template_shows_the_conflict(staff, register, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)
    services.gc_sweep()

    response = staff.post(action("reactivate", template.pk), follow=True)

    template.refresh_from_db()
    assert template.state == TemplateState.REMOVED
    assert any("its bytes are already removed" in text for text in messages_of(response))


def test_transition_and_sweep_urls_refuse_get(staff, register):
    template = register()

    # Deactivate's GET is its confirmation page; a one-click button is POST only.
    assert "What will be affected" in staff.get(action("deactivate", template.pk)).content.decode()
    assert staff.get(action("reactivate", template.pk)).status_code == 405
    assert staff.get(url("sweep")).status_code == 405
    assert staff.get(url("sweep_dry_run")).status_code == 405
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE


def test_transition_urls_need_a_staff_login(client, register):
    template = register()

    response = client.post(action("deactivate", template.pk), {"confirm": "yes"})

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE


# Bulk actions ------------------------------------------------------------------------------


def test_bulk_deactivate_and_reactivate_actions(staff, register):
    templates = [register(name=f"bulk-{n}") for n in range(3)]

    response = run_action(staff, "deactivate_selected", templates)

    assert "Deactivated: 3." in messages_of(response)
    assert set(Template.objects.values_list("state", flat=True)) == {TemplateState.INACTIVE}

    response = run_action(staff, "reactivate_selected", templates[:2])

    assert "Reactivated: 2." in messages_of(response)
    states = dict(Template.objects.values_list("name", "state"))
    assert states == {"bulk-0": "ACTIVE", "bulk-1": "ACTIVE", "bulk-2": "INACTIVE"}


def test_bulk_reactivate_reports_each_refusal(staff, register, user):
    removed, inactive = register(name="gone"), register(name="back")
    for template in (removed, inactive):
        services.template_deactivate(template_id=template.pk, actor=user)
    services.gc_sweep(template_ids=[removed.pk])

    # REMOVED templates are listed (and so selectable) once the state filter asks for them.
    response = staff.post(
        url("changelist") + "?state=all",
        {"action": "reactivate_selected", "_selected_action": [removed.pk, inactive.pk]},
        follow=True,
    )

    texts = messages_of(response)
    assert "Reactivated: 1." in texts
    assert any("cannot reactivate Template 'gone' in state REMOVED" in text for text in texts)


# GC sweep ----------------------------------------------------------------------------------


@pytest.fixture
def unused_and_used(register, make_vm, user):
    """Two INACTIVE templates: one nothing uses, one a (destroyed, recoverable) VM still holds."""
    unused, used = register(name="old-iso"), register(name="busy")
    vm = make_vm(used)
    vm_services.vm_destroy(vm_id=vm.pk, actor=user)
    for template in (unused, used):
        services.template_deactivate(template_id=template.pk, actor=user)
    return unused, used


def run_url(run: GcSweepRun) -> str:
    return reverse("admin:templates_app_gcsweeprun_change", args=[run.pk])


def test_sweep_button_queues_a_run_that_removes_the_unused_and_keeps_the_used(
    staff, unused_and_used, sweeps_run_here
):
    unused, used = unused_and_used

    with sweeps_run_here():
        response = staff.post(url("sweep"), {"confirm": "yes"}, follow=True)
        # Queued, not run inside the request: nothing is removed yet.
        assert Template.objects.get(pk=unused.pk).state == TemplateState.INACTIVE

    assert response.redirect_chain[-1][0] == url("changelist")
    run = GcSweepRun.objects.get()
    assert messages_of(response) == [
        f'GC sweep of every INACTIVE template queued: <a href="{run_url(run)}">{run}</a>. '
        "It runs in the background; its page shows what it removed."
    ]
    unused.refresh_from_db()
    used.refresh_from_db()
    assert unused.state == TemplateState.REMOVED
    assert unused.removed_at is not None
    assert used.state == TemplateState.INACTIVE
    run.refresh_from_db()
    assert run.state == "DONE"
    page = staff.get(run_url(run)).content.decode()
    assert (
        "GC sweep removed 1 template(s) (old-iso); 1 held by live references: "
        "busy (1 VM, 1 destroyed)."
    ) in page


def test_sweep_dry_run_action_tells_and_changes_nothing(staff, unused_and_used):
    response = run_action(staff, "sweep_dry_run", unused_and_used)

    assert messages_of(response) == [
        "GC sweep dry run would remove 1 template(s) (old-iso); 1 held by live references: "
        "busy (1 VM, 1 destroyed)."
    ]
    assert set(Template.objects.values_list("state", flat=True)) == {TemplateState.INACTIVE}


def test_sweep_action_sweeps_only_the_selection(staff, register, user, sweeps_run_here):
    chosen, other = register(name="chosen"), register(name="other")
    for template in (chosen, other):
        services.template_deactivate(template_id=template.pk, actor=user)

    with sweeps_run_here():
        response = run_action(staff, "sweep_selected", [chosen])

    run = GcSweepRun.objects.get()
    assert run.template_ids == [chosen.pk]
    assert messages_of(response) == [
        f'GC sweep of 1 selected template(s) queued: <a href="{run_url(run)}">{run}</a>. '
        "It runs in the background; its page shows what it removed."
    ]
    page = staff.get(run_url(run)).content.decode()
    assert "GC sweep removed 1 template(s) (chosen); 0 held by live references." in page
    assert dict(Template.objects.values_list("name", "state")) == {
        "chosen": TemplateState.REMOVED,
        "other": TemplateState.INACTIVE,
    }


# Pages -------------------------------------------------------------------------------------


def count_queries(client, address: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(address)
    assert response.status_code == 200
    return len(queries.captured_queries)


def test_changelist_costs_the_same_queries_for_1_and_20_templates(staff, register, make_vm):
    make_vm(register(name="first"), name="vm-first")
    one = count_queries(staff, url("changelist"))

    for n in range(19):
        make_vm(register(name=f"more-{n}"), name=f"vm-{n}")
    twenty = count_queries(staff, url("changelist"))

    assert Template.objects.count() == 20
    assert twenty == one


def test_changelist_shows_live_reference_counts(staff, register, make_vm):
    template = register()
    make_vm(template, name="vm-a")
    make_vm(template, name="vm-b")

    response = staff.get(url("changelist"))

    assert response.context["cl"].result_list[0].references == 2
    cell = re.search(r'<td class="field-references[^"]*"[^>]*>\s*(\d+)', response.content.decode())
    assert cell is not None and cell.group(1) == "2"


def test_changelist_search_finds_by_uuid(staff, register):
    template = register()
    register(name="other")

    response = staff.get(url("changelist"), {"q": str(template.uuid)[:13]})

    assert [t.pk for t in response.context["cl"].result_list] == [template.pk]


def test_change_page_shows_copies_references_and_events(staff, register, make_vm, user, store):
    template = register()
    vm = make_vm(template, name="web-1")
    services.template_deactivate(template_id=template.pk, actor=user, reason="deleted")

    response = staff.get(url("change", template.pk))

    html = response.content.decode()
    assert "Live references (1)" in html
    assert reverse("admin:agents_app_virtualmachine_change", args=[vm.pk]) in html
    assert "web-1" in html
    assert str(store) in html and "<progress" in html
    events = response.context["template_events"]
    assert [(e.from_state, e.to_state, e.actor_label, e.reason) for e in events] == [
        ("ACTIVE", "INACTIVE", "alice", "deleted"),
        ("", "ACTIVE", "alice", "registered"),
    ]
    assert html.index(">deleted<") < html.index(">registered<"), "newest first"


def test_change_page_of_an_unused_template_says_the_sweep_may_remove_it(staff, register):
    response = staff.get(url("change", register().pk))

    assert "Live references (0)" in response.content.decode()
    assert "the GC sweep may remove it" in response.content.decode()


# Other models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "templates_app_zone",
        "templates_app_imagestore",
        "templates_app_account",
        "templates_app_event",
        "templates_app_templatestoreref",
        "agents_app_virtualmachine",
    ],
)
def test_every_list_page_opens(staff, register, make_vm, model):
    make_vm(register())

    response = staff.get(reverse(f"admin:{model}_changelist"))

    assert response.status_code == 200
    assert response.context["cl"].result_count >= 1


def test_events_and_store_copies_are_read_only(staff, register):
    template = register()
    event = Event.objects.get(object_id=template.pk)

    assert staff.get(reverse("admin:templates_app_event_add")).status_code == 403
    assert staff.get(reverse("admin:templates_app_templatestoreref_add")).status_code == 403
    assert staff.get(reverse("admin:templates_app_event_delete", args=[event.pk])).status_code == (
        403
    )
    page = staff.get(reverse("admin:templates_app_event_change", args=[event.pk]))
    assert page.status_code == 200
    assert not page.context["adminform"].form.fields
    copies = staff.get(reverse("admin:templates_app_templatestoreref_changelist"))
    assert "<progress" in copies.content.decode()


def test_event_list_searches_reasons(staff, register, user):
    template = register(name="to-delete")
    register(name="kept")
    services.template_deactivate(template_id=template.pk, actor=user, reason="obsolete image")

    response = staff.get(reverse("admin:templates_app_event_changelist"), {"q": "obsolete"})

    assert [e.object_repr for e in response.context["cl"].result_list] == ["to-delete"]


def test_vm_actions_call_the_vm_services(staff, register, make_vm):
    vm = make_vm(register())

    def act(action):
        response = run_action(staff, action, [vm], model="agents_app_virtualmachine")
        vm.refresh_from_db()
        return messages_of(response)

    assert act("start_selected") == ["Started: 1."]
    assert vm.state == VmState.RUNNING
    assert act("expunge_selected") == ["cannot expunge VirtualMachine 'vm-1' in state RUNNING"]
    assert vm.state == VmState.RUNNING
    assert act("destroy_selected") == ["Destroyed: 1."]
    assert vm.state == VmState.DESTROYED
    assert act("recover_selected") == ["Recovered: 1."]
    assert vm.state == VmState.STOPPED
    act("destroy_selected")
    assert act("expunge_selected") == ["Expunged: 1."]
    assert vm.state == VmState.EXPUNGED


def test_vm_page_is_read_only(staff, register, make_vm):
    vm = make_vm(register())

    response = staff.get(reverse("admin:agents_app_virtualmachine_change", args=[vm.pk]))

    assert response.status_code == 200
    assert not response.context["adminform"].form.fields
    assert staff.get(reverse("admin:agents_app_virtualmachine_add")).status_code == 403


# Catalogue operations --------------------------------------------------------------------


def test_extract_button_gives_the_download_url(staff, register, store):
    from templates_app.choices import StoreRefState
    from templates_app.models import ImageStore

    template = register()
    ref = TemplateStoreRef.objects.get(template=template)
    image = Path(ImageStore.objects.get(pk=store.pk).path) / "template/tmpl/x/disk.qcow2"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"bytes")
    ref.install_path = "template/tmpl/x/disk.qcow2"
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        state=StoreRefState.READY, download_state="DOWNLOADED", install_path=ref.install_path
    )

    page = staff.get(url("change", template.pk))
    response = staff.post(url("action", template.pk, "extract"), follow=True)

    assert b'name="extract"' in page.content
    [message] = messages_of(response)
    assert message.startswith("Download URL, valid until")
    assert f"/api/v1/extracts/{template.uuid}/{ref.pk}/disk.qcow2?expires=" in message


def test_extract_button_of_a_template_without_a_copy_says_why(staff, register):
    template = register()  # its copy is not downloaded yet

    response = staff.post(url("action", template.pk, "extract"), follow=True)

    assert messages_of(response)[0].startswith("Copying the template into an image store")


def test_copy_to_zones_action_asks_for_zones_then_queues_copies(staff, register, store):
    from .factories import ImageStoreFactory, ZoneFactory

    templates = [register(name=f"c-{n}") for n in range(2)]
    zone_b = ZoneFactory(name="zone-b")
    ImageStoreFactory(zone=zone_b, name="store-b", path=store.path)

    asked = run_action(staff, "copy_to_zones", templates)
    done = staff.post(
        reverse("admin:templates_app_template_changelist"),
        {
            "action": "copy_to_zones",
            "_selected_action": [t.pk for t in templates],
            "zones": [zone_b.pk],
            "apply": "Copy",
        },
        follow=True,
    )

    assert b"Copy templates to zones" in asked.content and b"zone-b" in asked.content
    assert "Copies to zone-b queued: 2." in messages_of(done)
    assert TemplateStoreRef.objects.filter(store__zone=zone_b).count() == 2


def test_live_references_heading_summary_and_rows_agree(staff, register, make_vm, zone, account):
    from agents_app.models import VirtualMachine, VmPool

    template = register()
    vm = make_vm(template, name="web-1")
    vm_pool = VmPool.objects.create(
        name="lab", template=template, zone=zone, account=account, size=1
    )
    VirtualMachine.objects.filter(pk=vm.pk).update(vm_pool=vm_pool)

    response = staff.get(url("change", template.pk))

    html = response.content.decode()
    assert "Live references (2): 1 VM, 1 VM pool" in html
    section = html[html.index('id="live-references"') : html.index('id="events"')]
    rows = re.findall(r"<tr>\s*<td>([^<]+)</td>\s*<td>(?:<a [^>]+>)?([^<]+)", section)
    assert rows == [("VM", "web-1"), ("VM pool", "lab")]


def test_template_list_answers_is_it_usable(
    staff, register, store, user, django_assert_max_num_queries
):
    ready, failing, removed = register(name="ubuntu"), register(name="broken"), register(name="old")
    TemplateStoreRef.objects.filter(template=ready).update(
        state="READY", download_state="DOWNLOADED", size=10 << 30, physical_size=700 << 20
    )
    TemplateStoreRef.objects.filter(template=failing).update(
        download_state="DOWNLOAD_ERROR", error_text="HTTP 404 from mirror.example"
    )
    services.template_deactivate(template_id=removed.pk, actor=user)
    services.gc_sweep(template_ids=[removed.pk])
    for n in range(5):
        register(name=f"more-{n}")

    with django_assert_max_num_queries(12):
        response = staff.get(url("changelist"))

    html = response.content.decode()
    names = [t.name for t in response.context["cl"].result_list]
    assert "old" not in names and {"ubuntu", "broken"} <= set(names)
    assert "zone-a: " in html and ">READY<" in html
    assert "error: HTTP 404 from mirror.example" in html
    assert "10.0\xa0GB / 700.0\xa0MB" in html
    assert "ubuntu v1" in html
    removed_list = staff.get(url("changelist"), {"state": "REMOVED"})
    assert [t.name for t in removed_list.context["cl"].result_list] == ["old"]
