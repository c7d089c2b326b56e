"""Store downloads under faults: an unexpected exception, a copy another attempt holds, a
delete while the bytes stream. Real HTTP server on 127.0.0.1, real files."""

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from celery.exceptions import Retry
from django.db import connections
from django.utils import timezone
from werkzeug import Response

from templates_app import copies, services, tasks
from templates_app.copies import store_copy_download
from templates_app.models import TemplateStoreRef

from . import test_store_downloads
from .test_store_downloads import copy_of, files_under, sha256

qcow2_bytes = test_store_downloads.qcow2_bytes  # the module-scoped image fixture


@pytest.fixture(autouse=True)
def fast_downloads(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_DOWNLOAD_BACKOFF_BASE = 0.01
    settings.STENCIL_DOWNLOAD_MAX_ATTEMPTS = 2


@pytest.mark.django_db
def test_an_unexpected_exception_ends_in_download_error_with_its_text(
    httpserver, register, store, qcow2_bytes, monkeypatch, caplog
):
    httpserver.expect_request("/d.qcow2").respond_with_data(qcow2_bytes)
    template = register(url=httpserver.url_for("/d.qcow2"), checksum=sha256(qcow2_bytes))

    def broken_inspection(path, image_format, **bounds):
        raise UnicodeEncodeError("latin-1", "é", 0, 1, "ordinal not in range(256)")

    monkeypatch.setattr(copies, "inspect_image", broken_inspection)
    with caplog.at_level(logging.ERROR, logger="templates_app.copies"):
        ref = store_copy_download(ref_id=copy_of(template).pk)

    assert (ref.download_state, ref.state, ref.lease_owner) == ("DOWNLOAD_ERROR", "ALLOCATED", "")
    assert ref.error_text.startswith("UnicodeEncodeError: ")
    assert files_under(store) == [], "its temporary file is gone"
    assert "unexpected failure" in caplog.text and "Traceback" in caplog.text


@pytest.mark.django_db
def test_a_redelivery_while_another_attempt_holds_the_lease_comes_back_when_it_runs_out(
    register, store, monkeypatch
):
    template = register()
    ref = copy_of(template)
    expires = timezone.now() + timedelta(seconds=30)
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        download_state="DOWNLOAD_IN_PROGRESS",
        state="CREATING",
        lease_owner="other-worker",
        lease_expires_at=expires,
    )
    retried = []

    def retry(countdown):
        retried.append(countdown)
        return Retry()

    monkeypatch.setattr(tasks.store_copy_download_task, "retry", retry)
    with pytest.raises(Retry):
        tasks.store_copy_download_task.run(ref_id=ref.pk)

    assert 29 <= retried[0] <= 32, "looked at again once the other attempt's lease runs out"
    ref.refresh_from_db()
    assert (ref.download_state, ref.lease_owner) == ("DOWNLOAD_IN_PROGRESS", "other-worker")


@pytest.mark.django_db(transaction=True)
def test_deleting_a_template_cancels_its_download_and_removes_the_temporary_file(
    httpserver, register, store, user, qcow2_bytes
):
    sent_first_part = threading.Event()

    def slow_body(request):
        def chunks():
            yield qcow2_bytes[:65536]
            sent_first_part.set()
            for _ in range(100):  # ~10 s unless the client goes away
                time.sleep(0.1)
                yield b""
            yield qcow2_bytes[65536:]

        headers = {"Content-Length": str(len(qcow2_bytes))}
        return Response(chunks(), headers=headers, content_type="application/octet-stream")

    httpserver.expect_request("/slow.qcow2").respond_with_handler(slow_body)
    template = register(url=httpserver.url_for("/slow.qcow2"), checksum=sha256(qcow2_bytes))
    ref_id = copy_of(template).pk
    outcome = {}

    def download():
        try:
            outcome["ref"] = store_copy_download(ref_id=ref_id)
        finally:
            connections.close_all()

    worker = threading.Thread(target=download)
    worker.start()
    assert sent_first_part.wait(10)
    time.sleep(1.2)  # the first progress write has happened: the temp file exists
    assert any(".part-" in name for name in files_under(store))

    services.template_deactivate(template_id=template.pk, actor=user)
    worker.join(15)

    assert not worker.is_alive(), "the download stopped at its next progress write"
    ref = TemplateStoreRef.objects.get(pk=ref_id)
    assert (ref.download_state, ref.state) == ("DOWNLOAD_ERROR", "ALLOCATED")
    assert ref.error_text == services.CANCELLED_BY_DELETE
    assert files_under(store) == [], "no partial file left"
    template.account.refresh_from_db()
    assert template.account.used_secondary_bytes == 0


@pytest.mark.django_db
def test_reactivating_a_template_requeues_the_downloads_its_delete_cancelled(
    register, store, user, admin_user, monkeypatch, django_capture_on_commit_callbacks
):
    template = register()
    ref = copy_of(template)
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        download_state="DOWNLOAD_IN_PROGRESS", state="CREATING", lease_owner="w"
    )
    services.template_deactivate(template_id=template.pk, actor=user)
    sent = []
    monkeypatch.setattr(tasks.store_copy_download_task, "delay", lambda **kw: sent.append(kw))

    with django_capture_on_commit_callbacks(execute=True):
        services.template_reactivate(template_id=template.pk, actor=admin_user)

    assert sent == [{"ref_id": ref.pk}]
    assert Path(store.path).is_dir()


@pytest.mark.django_db
def test_a_download_stops_at_the_accounts_secondary_quota(
    httpserver, register, store, account, qcow2_bytes
):
    from templates_app.models import Account

    httpserver.expect_request("/big.qcow2").respond_with_data(qcow2_bytes)
    template = register(url=httpserver.url_for("/big.qcow2"), checksum=sha256(qcow2_bytes))
    Account.objects.filter(pk=account.pk).update(max_secondary_bytes=len(qcow2_bytes) - 1)

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert (ref.download_state, ref.state) == ("DOWNLOAD_ERROR", "ALLOCATED")
    assert "max_secondary_bytes" in ref.error_text
    assert files_under(store) == []
    account.refresh_from_db()
    assert account.used_secondary_bytes == 0


@pytest.mark.django_db
def test_a_full_account_downloads_nothing(register, store, account):
    from templates_app.models import Account

    template = register()
    Account.objects.filter(pk=account.pk).update(max_secondary_bytes=0)

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert ref.download_state == "DOWNLOAD_ERROR"
    assert "max_secondary_bytes" in ref.error_text
    assert files_under(store) == []
