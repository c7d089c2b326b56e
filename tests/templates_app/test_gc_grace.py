"""Delayed delete: the sweep removes an unreferenced INACTIVE template only after
STENCIL_GC_GRACE_SECONDS, so a mistaken delete can be reactivated in the meantime."""

import importlib
from datetime import timedelta

import pytest
from django.apps import apps
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from templates_app import services
from templates_app.choices import TemplateState
from templates_app.models import Template

pytestmark = pytest.mark.django_db

HOUR = 3600


@pytest.fixture
def grace(settings):
    settings.STENCIL_GC_GRACE_SECONDS = HOUR
    return timedelta(seconds=HOUR)


def deleted(register, user, **overrides) -> Template:
    template = register(**overrides)
    services.template_deactivate(template_id=template.pk, actor=user)
    template.refresh_from_db()
    return template


def age(template: Template, by: timedelta) -> None:
    """As if the template had been deleted `by` earlier."""
    Template.objects.filter(pk=template.pk).update(deactivated_at=template.deactivated_at - by)


def test_delete_records_when_and_reactivate_clears_it(register, user, admin_user, grace):
    before = timezone.now()
    template = deleted(register, user)
    assert before <= template.deactivated_at <= timezone.now()

    services.template_reactivate(template_id=template.pk, actor=admin_user)

    template.refresh_from_db()
    assert template.deactivated_at is None
    assert template.removal_not_before is None


def test_every_version_deleted_with_its_base_gets_deactivated_at(register, user, grace):
    from versions_app.services import template_version_create

    base = register()
    version = template_version_create(base_template_id=base.pk, actor=user)
    services.template_deactivate(template_id=base.pk, actor=user)

    version.refresh_from_db()
    assert version.state == TemplateState.INACTIVE
    assert version.deactivated_at is not None


def sweeps_queued_by(delete, monkeypatch, capture) -> list[dict]:
    """The sweeps a delete sends once it commits."""
    from templates_app import tasks

    sent: list[dict] = []
    monkeypatch.setattr(tasks.gc_sweep_task, "delay", lambda **kw: sent.append(kw))
    with capture(execute=True):
        delete()
    return sent


def test_a_young_unreferenced_template_survives_the_sweep_and_can_be_reactivated(
    register, user, admin_user, grace, django_capture_on_commit_callbacks, monkeypatch
):
    template = register()
    sent = sweeps_queued_by(
        lambda: services.template_deactivate(template_id=template.pk, actor=user),
        monkeypatch,
        django_capture_on_commit_callbacks,
    )
    assert sent == [], "no sweep is queued for a template still in its grace"

    assert services.gc_sweep(dry_run=True).removed_count == 0
    result = services.gc_sweep()

    template.refresh_from_db()
    assert template.state == TemplateState.INACTIVE
    assert result.removed_count == 0
    services.template_reactivate(template_id=template.pk, actor=admin_user)
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE


def test_an_older_one_is_removed(register, user, grace):
    template = deleted(register, user)
    young = deleted(register, user, name="young")
    age(template, grace + timedelta(seconds=1))

    dry = services.gc_sweep(dry_run=True)
    result = services.gc_sweep()

    assert [row["name"] for row in dry.removed] == ["debian-12"]
    assert [row["name"] for row in result.removed] == ["debian-12"]
    template.refresh_from_db()
    young.refresh_from_db()
    assert template.state == TemplateState.REMOVED
    assert young.state == TemplateState.INACTIVE


def test_the_batch_re_check_under_the_lock_honours_the_grace(register, user, grace):
    """A candidate list made before a reactivate-and-delete again must not remove it early."""
    template = deleted(register, user)

    removed = services._remove_batch([template.pk], actor=None, actor_label="gc-sweep")

    assert removed == []
    template.refresh_from_db()
    assert template.state == TemplateState.INACTIVE


def test_grace_zero_removes_at_once(
    register, user, settings, django_capture_on_commit_callbacks, monkeypatch
):
    settings.STENCIL_GC_GRACE_SECONDS = 0
    template = register()
    sent = sweeps_queued_by(
        lambda: services.template_deactivate(template_id=template.pk, actor=user),
        monkeypatch,
        django_capture_on_commit_callbacks,
    )
    assert sent == [{"template_ids": [template.pk]}], "the unused template's sweep goes at once"

    services.gc_sweep(template_ids=[template.pk])

    template.refresh_from_db()
    assert template.state == TemplateState.REMOVED


def test_api_shows_removal_not_before_for_inactive_only(api, admin_api, register, user, grace):
    template = register()
    url = reverse("template-detail", kwargs={"id": template.uuid})
    assert api.get(url).data["removal_not_before"] is None

    response = api.delete(url)

    template.refresh_from_db()
    shown = parse_datetime(response.data["template"]["removal_not_before"])
    assert shown == template.deactivated_at + grace
    listed = admin_api.get(
        reverse("template-list"), {"state": "INACTIVE", "templatefilter": "all"}
    ).data["results"]
    assert parse_datetime(listed[0]["removal_not_before"]) == shown
    age(template, grace * 2)
    services.gc_sweep()
    assert admin_api.get(url).data["removal_not_before"] is None


def test_admin_list_and_change_page_say_when_it_goes(client, admin_user, register, user, grace):
    client.force_login(admin_user)
    template = deleted(register, user)
    register(name="kept")

    listing = client.get(reverse("admin:templates_app_template_changelist")).content.decode()
    page = client.get(
        reverse("admin:templates_app_template_change", args=[template.pk])
    ).content.decode()

    assert listing.count("removed after") == 1
    assert "removed after" in page


def test_data_migration_dates_existing_deletes_by_their_last_update(register, user):
    template = deleted(register, user)
    Template.objects.filter(pk=template.pk).update(deactivated_at=None)
    migration = importlib.import_module("templates_app.migrations.0008_template_deactivated_at")

    migration.inactive_since_last_update(apps, None)

    template.refresh_from_db()
    assert template.deactivated_at == template.updated_at
