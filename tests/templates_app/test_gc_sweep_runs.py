"""Queued GC sweeps: asked for by the API and the admin, run by a worker, polled until done."""

import logging

import pytest
from django.db import connections, transaction

from templates_app import services, sweeps, tasks
from templates_app.choices import GcSweepRunState, TemplateState
from templates_app.models import Event, GcSweepRun, Template

pytestmark = pytest.mark.django_db

SWEEP = "/api/v1/gc/sweep/"
RUNS = "/api/v1/gc/sweeps/"


@pytest.fixture
def sent(monkeypatch):
    """What the services sent to the broker (nothing actually goes)."""
    calls: list[int] = []
    monkeypatch.setattr(tasks.gc_sweep_run_task, "delay", calls.append)
    return calls


@pytest.fixture
def unused_and_used(register, make_vm, user):
    unused, used = register(name="unused"), register(name="used")
    make_vm(used)
    for template in (unused, used):
        services.template_deactivate(template_id=template.pk, actor=user)
    return unused, used


# API ---------------------------------------------------------------------------------------


def test_a_sweep_is_queued_with_202_and_its_poll_reaches_done(
    admin_api, admin_user, unused_and_used, sweeps_run_here
):
    unused, used = unused_and_used

    with sweeps_run_here():
        response = admin_api.post(SWEEP, {"dry_run": False}, format="json")
        queued = response.data
        assert Template.objects.get(pk=unused.pk).state == TemplateState.INACTIVE

    assert response.status_code == 202
    run = GcSweepRun.objects.get()
    assert queued["id"] == str(run.uuid)
    assert queued["state"] == "QUEUED"
    assert queued["url"] == f"http://testserver{RUNS}{run.uuid}/"
    assert response["Location"] == queued["url"]

    polled = admin_api.get(queued["url"])
    assert polled.status_code == 200
    body = polled.data
    assert body["state"] == "DONE"
    assert body["requested_by"] == admin_user.username
    assert body["template_count"] is None
    assert body["error"] == ""
    assert body["started_at"] is not None and body["finished_at"] is not None
    assert body["result"]["skipped"] is False
    assert body["result"]["removed"] == [{"id": str(unused.uuid), "name": "unused"}]
    assert [row["name"] for row in body["result"]["held"]] == ["used"]
    assert Template.objects.get(pk=unused.pk).state == TemplateState.REMOVED
    assert Template.objects.get(pk=used.pk).state == TemplateState.INACTIVE


def test_a_dry_run_stays_synchronous_and_queues_nothing(admin_api, unused_and_used, sent):
    response = admin_api.post(SWEEP, {"dry_run": True}, format="json")

    assert response.status_code == 200
    assert response.data["dry_run"] is True
    assert [row["name"] for row in response.data["removed"]] == ["unused"]
    assert not GcSweepRun.objects.exists()
    assert sent == []


def test_a_tenant_gets_403_on_sweeps_and_runs(api, admin_api, sent):
    run = sweeps.gc_sweep_request(actor=None)

    assert api.post(SWEEP, {"dry_run": False}, format="json").status_code == 403
    assert api.post(SWEEP, {"dry_run": True}, format="json").status_code == 403
    assert api.get(RUNS).status_code == 403
    assert api.get(f"{RUNS}{run.uuid}/").status_code == 403
    assert GcSweepRun.objects.count() == 1
    assert admin_api.get(f"{RUNS}{run.uuid}/").status_code == 200


def test_an_unknown_run_is_404(admin_api):
    assert admin_api.get(f"{RUNS}00000000-0000-0000-0000-000000000000/").status_code == 404


def test_runs_are_listed_newest_first_at_a_constant_query_count(
    admin_api, sent, django_assert_max_num_queries
):
    first = sweeps.gc_sweep_request(actor=None)
    with django_assert_max_num_queries(4):
        one = admin_api.get(RUNS).data
    assert [row["id"] for row in one["results"]] == [str(first.uuid)]

    for user_number in range(5):
        from .factories import UserFactory

        staff = UserFactory(username=f"op-{user_number}", is_staff=True)
        sweeps.gc_sweep_request(actor=staff)
    with django_assert_max_num_queries(4):
        many = admin_api.get(RUNS).data
    assert many["count"] == 6
    assert many["results"][0]["requested_by"] == "op-4"
    assert many["results"][-1]["id"] == str(first.uuid)


def test_runs_filter_by_state(admin_api, sent):
    done = sweeps.gc_sweep_request(actor=None)
    sweeps.gc_sweep_run(run_id=done.pk)
    queued = sweeps.gc_sweep_request(actor=None)

    rows = admin_api.get(RUNS, {"state": "QUEUED"}).data["results"]

    assert [row["id"] for row in rows] == [str(queued.uuid)]


# Services ----------------------------------------------------------------------------------


def test_the_task_is_sent_only_after_commit(user, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = sweeps.gc_sweep_request(actor=user, template_ids=[3, 1, 3])
        assert sent == []

    assert len(callbacks) == 1
    callbacks[0]()
    assert sent == [run.pk]
    assert run.state == GcSweepRunState.QUEUED
    assert run.template_ids == [1, 3]
    assert run.requested_by == user


def test_nothing_is_sent_when_the_request_rolls_back(user, sent):
    with pytest.raises(RuntimeError), transaction.atomic():
        sweeps.gc_sweep_request(actor=user)
        raise RuntimeError("rolled back")

    assert not GcSweepRun.objects.exists()
    assert sent == []


def test_a_run_that_raises_is_failed_with_the_error_text(
    user, unused_and_used, sent, monkeypatch, caplog
):
    unused, _used = unused_and_used

    def broken_sweep(**kwargs):
        raise OSError("image store /srv/a is not mounted")

    monkeypatch.setattr(services, "gc_sweep", broken_sweep)
    run = sweeps.gc_sweep_request(actor=user)

    with caplog.at_level(logging.ERROR, logger="templates_app.sweeps"):
        assert tasks.gc_sweep_run_task(run.pk) == GcSweepRunState.FAILED

    run.refresh_from_db()
    assert run.state == GcSweepRunState.FAILED
    assert run.error_text == "OSError: image store /srv/a is not mounted"
    assert run.result is None
    assert run.finished_at is not None
    assert "Traceback" in caplog.text and "not mounted" in caplog.text
    assert Template.objects.get(pk=unused.pk).state == TemplateState.INACTIVE


def test_a_repeat_delivery_of_a_done_run_is_a_no_op(user, unused_and_used, sent, monkeypatch):
    run = sweeps.gc_sweep_request(actor=user)
    sweeps.gc_sweep_run(run_id=run.pk)
    run.refresh_from_db()
    done = (run.state, run.result, run.started_at, run.finished_at)
    events = Event.objects.count()

    calls = []
    monkeypatch.setattr(services, "gc_sweep", lambda **kw: calls.append(kw))
    assert tasks.gc_sweep_run_task(run.pk) == GcSweepRunState.DONE

    run.refresh_from_db()
    assert (run.state, run.result, run.started_at, run.finished_at) == done
    assert done[0] == GcSweepRunState.DONE and done[1]["removed_count"] == 1
    assert calls == []
    assert Event.objects.count() == events


def test_a_running_run_is_not_run_twice(user, sent, monkeypatch):
    run = sweeps.gc_sweep_request(actor=user)
    calls = []
    real_sweep = services.gc_sweep

    def sweep_and_redeliver(**kwargs):
        calls.append(kwargs)
        # The same message delivered again while the first delivery sweeps.
        assert sweeps.gc_sweep_run(run_id=run.pk).state == GcSweepRunState.RUNNING
        return real_sweep(**kwargs)

    monkeypatch.setattr(services, "gc_sweep", sweep_and_redeliver)
    assert sweeps.gc_sweep_run(run_id=run.pk).state == GcSweepRunState.DONE
    assert len(calls) == 1


def test_a_run_sweeps_only_its_templates_as_its_requester(register, user, admin_user, sent):
    chosen, other = register(name="chosen"), register(name="other")
    for template in (chosen, other):
        services.template_deactivate(template_id=template.pk, actor=user)

    run = sweeps.gc_sweep_request(actor=admin_user, template_ids=[chosen.pk])
    run = sweeps.gc_sweep_run(run_id=run.pk)

    assert run.result["removed"] == [{"id": str(chosen.uuid), "name": "chosen"}]
    assert dict(Template.objects.values_list("name", "state")) == {
        "chosen": TemplateState.REMOVED,
        "other": TemplateState.INACTIVE,
    }
    removal = Event.objects.get(object_uuid=chosen.uuid, to_state=TemplateState.REMOVED)
    assert removal.actor == admin_user
    run_events = Event.objects.filter(object_uuid=run.uuid).order_by("id")
    assert list(run_events.values_list("from_state", "to_state")) == [
        ("", "QUEUED"),
        ("QUEUED", "RUNNING"),
        ("RUNNING", "DONE"),
    ]


def test_a_run_skipped_by_another_sweep_is_done_and_says_so(user, unused_and_used, sent):
    unused, _used = unused_and_used
    run = sweeps.gc_sweep_request(actor=user)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [services.GC_ADVISORY_LOCK_KEY])
        run = sweeps.gc_sweep_run(run_id=run.pk)
    finally:
        other.close()

    assert run.state == GcSweepRunState.DONE
    assert run.result["skipped"] is True
    assert run.result["removed_count"] == 0
    assert Template.objects.get(pk=unused.pk).state == TemplateState.INACTIVE


# Admin -------------------------------------------------------------------------------------


def test_the_admin_shows_runs_read_only(client, admin_user, unused_and_used, sent):
    from django.urls import reverse

    run = sweeps.gc_sweep_run(run_id=sweeps.gc_sweep_request(actor=admin_user).pk)
    client.force_login(admin_user)

    listing = client.get(reverse("admin:templates_app_gcsweeprun_changelist"))
    page = client.get(reverse("admin:templates_app_gcsweeprun_change", args=[run.pk]))

    assert listing.status_code == 200 and str(run.uuid) in listing.content.decode()
    assert page.status_code == 200
    text = page.content.decode()
    assert "GC sweep removed 1 template(s) (unused); 1 held by live references" in text
    assert 'name="_save"' not in text
    assert client.get(reverse("admin:templates_app_gcsweeprun_add")).status_code == 403
