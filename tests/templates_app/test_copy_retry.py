"""Operators act on failures: "Retry download" of a failed store copy or pool copy (API and
admin), and the lists of failed, in-progress and stuck copies (API `status`, admin filter).

Failures are real: the image server answers 404 (store copy), or the pool copy is asked for
before the template has a READY store copy. The retry's on-commit callback is run, and then the
task it sent, so each retried copy ends READY / DOWNLOADED.
"""

import hashlib
import subprocess
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agents_app.agent import heartbeat
from agents_app.agent.pool_copies import PoolCopyFailed, pool_copy_ensure
from agents_app.agent.tasks import pool_copy_task
from agents_app.models import PrimaryPool, TemplatePoolRef
from agents_app.pool_copies import pool_copy_retry
from templates_app import copies, tasks
from templates_app.copies import store_copy_download, store_copy_retry
from templates_app.errors import StencilError
from templates_app.models import Event, TemplateStoreRef
from tests.libvirt_backends import open_backend

pytestmark = pytest.mark.django_db

STORE_COPIES = "/api/v1/store-copies/"
POOL_COPIES = "/api/v1/pool-copies/"


@pytest.fixture
def image(httpserver, settings, tmp_path):
    """A real qcow2 the server does not have yet (404) until `serve()` is called."""
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_DOWNLOAD_MAX_ATTEMPTS = 1
    path = tmp_path / "base.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), "4M"], check=True, capture_output=True
    )
    data = path.read_bytes()
    httpserver.expect_request("/base.qcow2").respond_with_data("gone", status=404)

    def serve() -> None:
        httpserver.clear()
        httpserver.expect_request("/base.qcow2").respond_with_data(data)

    checksum = "{SHA-256}" + hashlib.sha256(data).hexdigest()
    return httpserver.url_for("/base.qcow2"), checksum, serve


@pytest.fixture
def sent_downloads(monkeypatch):
    """Download tasks sent after commit, recorded instead of going to the broker."""
    calls = []
    monkeypatch.setattr(tasks.store_copy_download_task, "delay", lambda **kw: calls.append(kw))
    return calls


@pytest.fixture
def sent_pool_copies(monkeypatch):
    calls = []
    monkeypatch.setattr(pool_copy_task, "apply_async", lambda **kw: calls.append(kw))
    return calls


@pytest.fixture
def failed_copy(register, image):
    """A store copy whose download failed (404), and the function that makes the URL work."""
    url, checksum, serve = image
    template = register(url=url, checksum=checksum)
    ref = TemplateStoreRef.objects.get(template=template)
    ref = store_copy_download(ref_id=ref.pk)
    assert ref.download_state == "DOWNLOAD_ERROR", ref.error_text
    return ref, serve


def retry_url(base: str, ref) -> str:
    return f"{base}{ref.pk}/retry/"


# Store copies: the service -----------------------------------------------------------------


def test_retry_keeps_the_error_in_an_event_and_the_attempts(failed_copy, admin_user):
    ref, _serve = failed_copy
    error = ref.error_text

    retried = store_copy_retry(ref_id=ref.pk, actor=admin_user)

    assert retried.download_state == "NOT_DOWNLOADED"
    assert retried.attempts == 1
    assert retried.error_text == ""
    event = Event.objects.filter(object_id=ref.pk, field="download_state").first()
    assert (event.from_state, event.to_state) == ("DOWNLOAD_ERROR", "NOT_DOWNLOADED")
    assert error in event.reason and event.actor_label == "root"


def test_nothing_is_sent_from_a_rolled_back_retry(failed_copy, admin_user, sent_downloads):
    ref, _serve = failed_copy
    with pytest.raises(RuntimeError), transaction.atomic():
        store_copy_retry(ref_id=ref.pk, actor=admin_user)
        raise RuntimeError("rolled back")
    ref.refresh_from_db()
    assert ref.download_state == "DOWNLOAD_ERROR"
    assert sent_downloads == []


def test_a_copy_of_an_inactive_template_is_not_retried(failed_copy, admin_user, user):
    from templates_app import services

    ref, _serve = failed_copy
    services.template_deactivate(template_id=ref.template_id, actor=user)
    with pytest.raises(StencilError, match="INACTIVE") as refused:
        store_copy_retry(ref_id=ref.pk, actor=admin_user)
    assert refused.value.status_code == 409


# Store copies: the API ---------------------------------------------------------------------


def test_api_retry_of_a_failed_copy_ends_ready(
    admin_api, failed_copy, sent_downloads, django_capture_on_commit_callbacks
):
    ref, serve = failed_copy
    serve()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.post(retry_url(STORE_COPIES, ref))

    assert response.status_code == 202, response.data
    assert response.data["id"] == ref.pk
    assert response.data["download_state"] == "NOT_DOWNLOADED"
    assert sent_downloads == [{"ref_id": ref.pk}]
    assert tasks.store_copy_download_task(**sent_downloads[0]) == "DOWNLOADED"
    ref.refresh_from_db()
    assert (ref.state, ref.attempts) == ("READY", 2)


def test_api_retry_of_a_ready_copy_is_409_naming_the_state(
    admin_api, failed_copy, sent_downloads, django_capture_on_commit_callbacks
):
    ref, serve = failed_copy
    serve()
    with django_capture_on_commit_callbacks(execute=True):
        admin_api.post(retry_url(STORE_COPIES, ref))
    tasks.store_copy_download_task(ref_id=ref.pk)

    response = admin_api.post(retry_url(STORE_COPIES, ref))

    assert response.status_code == 409
    assert "DOWNLOADED" in response.data["detail"]


def test_store_copies_are_for_staff_only(api, failed_copy):
    ref, _serve = failed_copy
    assert api.get(STORE_COPIES).status_code == 403
    assert api.post(retry_url(STORE_COPIES, ref)).status_code == 403
    ref.refresh_from_db()
    assert ref.download_state == "DOWNLOAD_ERROR"


def test_status_filter_lists_failed_in_progress_and_stuck(admin_api, register, failed_copy):
    failed, _serve = failed_copy
    register(name="waiting")  # NOT_DOWNLOADED: none of the three
    working = TemplateStoreRef.objects.get(template=register(name="working"))
    stuck = TemplateStoreRef.objects.get(template=register(name="stuck"))
    copies._claim(working.pk, "worker-1")
    copies._claim(stuck.pk, "worker-2")
    TemplateStoreRef.objects.filter(pk=stuck.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )

    def listed(status: str) -> list[int]:
        return [
            row["id"] for row in admin_api.get(STORE_COPIES, {"status": status}).data["results"]
        ]

    assert listed("failed") == [failed.pk]
    assert listed("in_progress") == [working.pk, stuck.pk]
    assert listed("stuck") == [stuck.pk]
    assert admin_api.get(STORE_COPIES, {"status": "broken"}).status_code == 400


def test_no_progress_for_a_while_is_stuck_too(admin_api, register, settings):
    settings.STENCIL_COPY_STUCK_AFTER_SECONDS = 600
    ref = TemplateStoreRef.objects.get(template=register())
    copies._claim(ref.pk, "worker-1")
    assert admin_api.get(STORE_COPIES, {"status": "stuck"}).data["count"] == 0
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        updated_at=timezone.now() - timedelta(seconds=601)
    )
    assert admin_api.get(STORE_COPIES, {"status": "stuck"}).data["count"] == 1


def test_store_copies_list_costs_the_same_queries_for_one_and_many(admin_api, register):
    register(name="one")
    with CaptureQueriesContext(connection) as one:
        assert admin_api.get(STORE_COPIES).data["count"] == 1
    for n in range(6):
        register(name=f"more-{n}")
    with CaptureQueriesContext(connection) as many:
        assert admin_api.get(STORE_COPIES).data["count"] == 7
    assert len(many) == len(one)


# Pool copies -------------------------------------------------------------------------------


@pytest.fixture
def failed_pool_copy(register, image, zone, tmp_path):
    """A pool copy that failed (asked for before the template had a READY store copy), on a
    libvirt test-driver pool an Up host reaches; `make_source()` downloads the store copy."""
    url, checksum, serve = image
    serve()
    template = register(url=url, checksum=checksum)
    with open_backend("test", tmp_path) as backend:
        host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri=backend.uri)
        pool = PrimaryPool.objects.create(
            zone=zone,
            name="pool-1",
            libvirt_pool_name=backend.pool_name,
            path=str(backend.pool_dir),
        )
        pool.hosts.add(host)
        with pytest.raises(PoolCopyFailed, match="no READY copy"):
            pool_copy_ensure(template_id=template.pk, pool_id=pool.pk, libvirt_uri=backend.uri)
        ref = TemplatePoolRef.objects.get(template=template, pool=pool)
        assert ref.state == "DOWNLOAD_ERROR"

        def make_source() -> None:
            store = TemplateStoreRef.objects.get(template=template)
            assert store_copy_download(ref_id=store.pk).state == "READY"

        yield ref, make_source


def test_api_retry_of_a_failed_pool_copy_ends_downloaded(
    admin_api, failed_pool_copy, sent_pool_copies, django_capture_on_commit_callbacks
):
    ref, make_source = failed_pool_copy
    make_source()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.post(retry_url(POOL_COPIES, ref))

    assert response.status_code == 202, response.data
    assert response.data["id"] == ref.pk
    assert response.data["state"] == "NOT_DOWNLOADED"
    [sent] = sent_pool_copies
    assert sent["queue"] == "host.kvm-1"
    assert pool_copy_task(**sent["kwargs"]) == "DOWNLOADED"
    ref.refresh_from_db()
    assert (ref.state, ref.attempts, ref.error_text) == ("DOWNLOADED", 2, "")
    event = Event.objects.filter(object_id=ref.pk, to_state="NOT_DOWNLOADED").get()
    assert "no READY copy" in event.reason

    again = admin_api.post(retry_url(POOL_COPIES, ref))
    assert again.status_code == 409
    assert "DOWNLOADED" in again.data["detail"]


def test_pool_copy_retry_needs_an_up_host(failed_pool_copy, admin_user, sent_pool_copies):
    from agents_app.host_services import host_enter_maintenance

    ref, _make_source = failed_pool_copy
    host_enter_maintenance(host_id=ref.pool.hosts.get().pk, actor=admin_user)
    with pytest.raises(StencilError, match="no Up host") as refused:
        pool_copy_retry(ref_id=ref.pk, actor=admin_user)
    assert refused.value.status_code == 409
    ref.refresh_from_db()
    assert ref.state == "DOWNLOAD_ERROR"


def test_pool_copy_retry_is_staff_only_and_filter_lists_the_failed(
    api, admin_api, failed_pool_copy
):
    ref, _make_source = failed_pool_copy
    assert api.post(retry_url(POOL_COPIES, ref)).status_code == 403

    failed = admin_api.get(POOL_COPIES, {"status": "failed"}).data["results"]
    working = admin_api.get(POOL_COPIES, {"status": "in_progress"}).data["results"]
    assert [row["id"] for row in failed] == [ref.pk]
    assert working == []


# Admin -------------------------------------------------------------------------------------


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def test_admin_retry_action_and_button_for_store_copies(
    staff, failed_copy, register, sent_downloads, django_capture_on_commit_callbacks
):
    ref, serve = failed_copy
    serve()
    changelist = reverse("admin:templates_app_templatestoreref_changelist")
    change = reverse("admin:templates_app_templatestoreref_change", args=[ref.pk])
    register(name="other")

    filtered = staff.get(changelist, {"status": "failed"})
    assert list(filtered.context["cl"].result_list) == [ref]
    assert "Retry download" in staff.get(change).content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            changelist,
            {"action": "retry_selected", "_selected_action": [ref.pk]},
            follow=True,
        )
    assert "Queued again: 1." in response.content.decode()
    tasks.store_copy_download_task(**sent_downloads.pop())
    ref.refresh_from_db()
    assert ref.state == "READY"
    assert "Retry download" not in staff.get(change).content.decode()

    refused = staff.post(reverse("admin:templates_app_templatestoreref_retry", args=[ref.pk]))
    assert refused.status_code == 302
    assert "DOWNLOADED" in str(list(staff.get(change).context["messages"])[0])


def test_admin_retry_button_for_a_pool_copy(
    staff, failed_pool_copy, sent_pool_copies, django_capture_on_commit_callbacks
):
    ref, make_source = failed_pool_copy
    make_source()
    change = reverse("admin:agents_app_templatepoolref_change", args=[ref.pk])
    filtered = staff.get(
        reverse("admin:agents_app_templatepoolref_changelist"), {"status": "failed"}
    )
    assert list(filtered.context["cl"].result_list) == [ref]
    assert "Retry download" in staff.get(change).content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            reverse("admin:agents_app_templatepoolref_retry", args=[ref.pk]), follow=True
        )

    assert "is queued" in response.content.decode()
    [sent] = sent_pool_copies
    assert pool_copy_task(**sent["kwargs"]) == "DOWNLOADED"
    ref.refresh_from_db()
    assert ref.state == "DOWNLOADED"
