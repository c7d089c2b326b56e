"""Buttons on a template's admin page (templates_app.admin_actions): each calls its service;
destructive ones first show a confirmation page listing exactly what they affect."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from templates_app import services
from templates_app.choices import DownloadState, TemplateState
from templates_app.models import Event, Template

from .factories import AccountFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def action_url(template: Template, name: str) -> str:
    return reverse("admin:templates_app_template_action", args=[template.pk, name])


def change_url(template: Template) -> str:
    return reverse("admin:templates_app_template_change", args=[template.pk])


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_the_page_shows_the_buttons_of_its_state(staff, register):
    template = register()

    html = staff.get(change_url(template)).content.decode()

    assert action_url(template, "deactivate") in html
    assert action_url(template, "share") in html
    assert action_url(template, "prepare") in html  # compute's, through the registry
    assert action_url(template, "reactivate") not in html


def test_deactivate_asks_first_and_lists_what_it_affects(staff, register, make_vm, store):
    template = register(name="ubuntu")
    template.store_refs.update(physical_size=3 * 1024 * 1024)
    vm = make_vm(template, name="web-1")

    page = staff.get(action_url(template, "deactivate"))

    assert page.status_code == 200
    html = page.content.decode()
    assert "What will be affected" in html
    assert "ubuntu (version 1)" in html and "ACTIVE → INACTIVE" in html
    assert "ubuntu on store-a" in html and "3.0\xa0MB" in html
    assert vm.name in html, "the live reference is listed"
    assert "once nothing references them" in html
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE, "nothing happens before the confirmation"

    # A POST without the confirmation shows the page again; with it, the service runs.
    again = staff.post(action_url(template, "deactivate"))
    assert "Yes, deactivate (delete)" in again.content.decode()
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE

    done = staff.post(action_url(template, "deactivate"), {"confirm": "yes"}, follow=True)

    assert done.redirect_chain[-1][0] == change_url(template)
    template.refresh_from_db()
    assert template.state == TemplateState.INACTIVE
    assert any("is now INACTIVE" in text for text in messages_of(done))
    assert action_url(template, "reactivate") in done.content.decode()


def test_deactivating_a_base_lists_its_versions(staff, register, user):
    from versions_app.services import template_version_create

    base = register(name="debian")
    template_version_create(base_template_id=base.pk, actor=user, url="https://m.example/d2.qcow2")

    html = staff.get(action_url(base, "deactivate")).content.decode()

    assert "debian (version 2)" in html
    assert "2 template(s) become INACTIVE" in html


def test_reactivate_button(staff, register, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)

    response = staff.post(action_url(template, "reactivate"), follow=True)

    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE
    assert any("is now ACTIVE" in text for text in messages_of(response))


def test_a_stale_button_gets_the_services_refusal(staff, register, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)
    services.gc_sweep()

    response = staff.post(action_url(template, "deactivate"), {"confirm": "yes"}, follow=True)

    assert any("cannot delete" in text for text in messages_of(response)), messages_of(response)
    template.refresh_from_db()
    assert template.state == TemplateState.REMOVED


def test_retry_download_queues_the_failed_copies_again(staff, register):
    template = register()
    template.store_refs.update(download_state=DownloadState.DOWNLOAD_ERROR, error_text="404")
    assert (
        action_url(template, "retry-download") in staff.get(change_url(template)).content.decode()
    )

    response = staff.post(action_url(template, "retry-download"), follow=True)

    ref = template.store_refs.get()
    assert (ref.download_state, ref.error_text) == (DownloadState.NOT_DOWNLOADED, "")
    assert any("1 failed copy(ies)" in text for text in messages_of(response))
    assert action_url(template, "retry-download") not in response.content.decode()


def test_share_with_accounts_adds_removes_and_resets(staff, register, other_account):
    template = register()
    third = AccountFactory(name="initech")

    form = staff.get(action_url(template, "share")).content.decode()
    assert "globex" in form and "initech" in form
    assert f'value="{template.account_id}"' not in form, "its own account is not offered"

    staff.post(
        action_url(template, "share"), {"op": "add", "accounts": [other_account.pk, third.pk]}
    )
    assert set(template.shared_with.values_list("name", flat=True)) == {"globex", "initech"}
    staff.post(action_url(template, "share"), {"op": "remove", "accounts": [third.pk]})
    assert list(template.shared_with.values_list("name", flat=True)) == ["globex"]
    response = staff.post(action_url(template, "share"), {"op": "reset"}, follow=True)
    assert not template.shared_with.exists()
    assert any("shared with 0 account(s)" in text for text in messages_of(response))
    assert Event.objects.filter(object_id=template.pk, reason__contains="launch permissions")


def test_share_without_accounts_is_a_400_naming_the_field(staff, register):
    template = register()

    response = staff.post(action_url(template, "share"), {"op": "add"})

    assert response.status_code == 400
    assert response.context["form"].errors == {"accounts": ["give at least one account"]}
    assert not template.shared_with.exists()


def test_actions_need_a_staff_login(client, register, user):
    template = register()
    client.force_login(user)  # a tenant, not staff

    response = client.post(action_url(template, "deactivate"), {"confirm": "yes"})

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE


def test_staff_without_the_change_permission_cannot_act(client, register, other_account):
    template = register()
    viewer = UserFactory(username="viewer", is_staff=True)
    other_account.members.add(viewer)
    viewer.user_permissions.add(Permission.objects.get(codename="view_template"))
    client.force_login(viewer)

    assert (
        action_url(template, "deactivate") not in client.get(change_url(template)).content.decode()
    )
    assert client.post(action_url(template, "deactivate"), {"confirm": "yes"}).status_code == 403
    assert client.post(action_url(template, "share"), {"op": "reset"}).status_code == 403
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE


def test_one_click_actions_refuse_get(staff, register, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)

    assert staff.get(action_url(template, "reactivate")).status_code == 405
    template.refresh_from_db()
    assert template.state == TemplateState.INACTIVE


def test_sweep_now_asks_first_listing_what_it_removes(staff, register, make_vm, user):
    unused, used = register(name="unused"), register(name="used")
    unused.store_refs.update(physical_size=5 * 1024 * 1024)
    make_vm(used, name="keeper")
    for template in (unused, used):
        services.template_deactivate(template_id=template.pk, actor=user)

    page = staff.post(reverse("admin:templates_app_template_sweep"))

    html = page.content.decode()
    assert "1 template(s) removed, 1 held" in html
    assert "INACTIVE → REMOVED" in html and "unused on store-a" in html
    assert "5.0\xa0MB" in html and "keeper" in html
    assert not Event.objects.filter(to_state=TemplateState.REMOVED).exists()


def test_history_shows_the_objects_events_and_the_admin_log(staff, register, make_vm, user):
    template = register(name="ubuntu")
    staff.post(action_url(template, "deactivate"), {"confirm": "yes"})
    vm = make_vm(services.template_reactivate(template_id=template.pk, actor=user), name="w")
    from django.contrib.admin.models import CHANGE, LogEntry

    LogEntry.objects.log_actions(
        user_id=staff.session["_auth_user_id"],
        queryset=[template],
        action_flag=CHANGE,
        change_message="Changed display text.",
        single_object=True,
    )

    html = staff.get(reverse("admin:templates_app_template_history", args=[template.pk]))
    text = html.content.decode()

    assert 'id="stencil-events"' in text
    assert "registered" in text and "deleted" in text and "reactivated" in text
    assert "Changed display text." in text
    vm_history = staff.get(reverse("admin:agents_app_virtualmachine_history", args=[vm.pk]))
    assert "created" in vm_history.content.decode()


def test_bulk_deactivate_asks_first_listing_every_selected_template(staff, register):
    chosen = [register(name=f"bulk-{n}") for n in range(2)]
    changelist = reverse("admin:templates_app_template_changelist")
    selection = {"action": "deactivate_selected", "_selected_action": [t.pk for t in chosen]}

    page = staff.post(changelist, selection)

    html = page.content.decode()
    assert "Deactivate (delete) selected templates: 2 selected." in html
    assert "bulk-0 (version 1)" in html and "bulk-1 (version 1)" in html
    assert set(Template.objects.values_list("state", flat=True)) == {TemplateState.ACTIVE}

    staff.post(changelist, {**selection, "confirm": "yes", "index": "0"})
    assert set(Template.objects.values_list("state", flat=True)) == {TemplateState.INACTIVE}
