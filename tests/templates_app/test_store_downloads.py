"""Registration by URL: the storage worker's download into an image store, for real.

Real HTTP server on 127.0.0.1 (pytest-httpserver), real qemu-img images, real files.
"""

import hashlib
import subprocess
from pathlib import Path

import pytest
from werkzeug import Response

from templates_app import services
from templates_app.copies import store_copy_download
from templates_app.models import Event, TemplateStoreRef

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_downloads(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_DOWNLOAD_BACKOFF_BASE = 0.01
    settings.STENCIL_DOWNLOAD_READ_TIMEOUT = 2
    settings.STENCIL_DOWNLOAD_STALL_TIMEOUT = 2
    settings.STENCIL_DOWNLOAD_MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def qcow2_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("img") / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), "64M"], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(path)],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return "{SHA-256}" + hashlib.sha256(data).hexdigest()


def copy_of(template) -> TemplateStoreRef:
    return TemplateStoreRef.objects.select_related("store").get(template=template)


def files_under(store) -> list[str]:
    root = Path(store.path)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_download_verifies_inspects_and_lays_out_the_store(
    httpserver, register, store, qcow2_bytes
):
    httpserver.expect_request("/images/debian.qcow2").respond_with_data(qcow2_bytes)
    template = register(
        url=httpserver.url_for("/images/debian.qcow2"), checksum=sha256(qcow2_bytes)
    )

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert (ref.download_state, ref.state) == ("DOWNLOADED", "READY")
    assert ref.size == 64 * 1024 * 1024
    assert ref.physical_size == len(qcow2_bytes)
    assert ref.download_percent == 100
    folder = f"template/tmpl/{template.account_id}/{template.pk}"
    assert files_under(store) == [
        f"{folder}/{template.unique_name}.qcow2",
        f"{folder}/template.properties",
    ]
    assert (Path(store.path) / ref.install_path).read_bytes() == qcow2_bytes
    props = (Path(store.path) / folder / "template.properties").read_text()
    assert f"uniquename={template.unique_name}" in props
    assert "virtualsize=67108864" in props
    template.account.refresh_from_db()
    assert template.account.used_secondary_bytes == len(qcow2_bytes)


def test_a_repeat_is_a_no_op(httpserver, register, qcow2_bytes):
    httpserver.expect_request("/d.qcow2").respond_with_data(qcow2_bytes)
    template = register(url=httpserver.url_for("/d.qcow2"))
    store_copy_download(ref_id=copy_of(template).pk)
    store_copy_download(ref_id=copy_of(template).pk)
    assert len(httpserver.log) == 1


def test_checksum_mismatch_is_an_error_with_both_hashes_and_no_file(
    httpserver, register, store, qcow2_bytes
):
    httpserver.expect_request("/d.qcow2").respond_with_data(qcow2_bytes)
    wrong = "{SHA-256}" + "0" * 64
    template = register(url=httpserver.url_for("/d.qcow2"), checksum=wrong)

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert (ref.download_state, ref.state) == ("DOWNLOAD_ERROR", "ALLOCATED")
    assert wrong in ref.error_text
    assert hashlib.sha256(qcow2_bytes).hexdigest() in ref.error_text
    assert files_under(store) == []


def test_404_fails_at_once(httpserver, register, store):
    httpserver.expect_request("/gone.qcow2").respond_with_data("no", status=404)
    template = register(url=httpserver.url_for("/gone.qcow2"))

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert ref.download_state == "DOWNLOAD_ERROR"
    assert "404" in ref.error_text
    assert len(httpserver.log) == 1
    assert files_under(store) == []


def test_500_then_200_is_retried(httpserver, register, qcow2_bytes):
    httpserver.expect_ordered_request("/d.qcow2").respond_with_data("busy", status=500)
    httpserver.expect_ordered_request("/d.qcow2").respond_with_data(qcow2_bytes)
    template = register(url=httpserver.url_for("/d.qcow2"), checksum=sha256(qcow2_bytes))

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert ref.download_state == "DOWNLOADED"


def test_hostile_image_is_rejected_and_removed(httpserver, register, store, tmp_path):
    base = tmp_path / "base.qcow2"
    child = tmp_path / "child.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(base), "1M"], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(child)],
        check=True,
        capture_output=True,
    )
    httpserver.expect_request("/evil.qcow2").respond_with_data(child.read_bytes())
    template = register(url=httpserver.url_for("/evil.qcow2"))

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert ref.download_state == "DOWNLOAD_ERROR"
    assert "backing file" in ref.error_text
    assert files_under(store) == []


def test_declared_raw_but_qcow2_is_rejected(httpserver, register, store, qcow2_bytes):
    httpserver.expect_request("/d.img").respond_with_data(qcow2_bytes)
    template = register(url=httpserver.url_for("/d.img"), image_format="RAW")

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert ref.download_state == "DOWNLOAD_ERROR"
    assert files_under(store) == []


def test_redirect_to_a_denied_address_is_refused(httpserver, register, store, settings):
    settings.STENCIL_URL_DENIED_NETWORKS = ["127.0.0.2/32", "169.254.0.0/16"]
    httpserver.expect_request("/d.qcow2").respond_with_response(
        Response(status=302, headers={"Location": "http://127.0.0.2/secret"})
    )
    template = register(url=httpserver.url_for("/d.qcow2"))

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert ref.download_state == "DOWNLOAD_ERROR"
    assert "127.0.0.2" in ref.error_text
    assert files_under(store) == []


def test_http_headers_from_details_are_sent(httpserver, register, qcow2_bytes):
    httpserver.expect_request(
        "/d.qcow2", headers={"X-Token": "abc", "X-Other": "v"}
    ).respond_with_data(qcow2_bytes)
    template = register(
        url=httpserver.url_for("/d.qcow2"),
        details=[
            {"key": "HTTP_HEADER", "value": "X-Token:abc"},
            {"key": "HTTP_HEADER:X-Other", "value": "v"},
        ],
    )

    assert store_copy_download(ref_id=copy_of(template).pk).download_state == "DOWNLOADED"


def test_a_failed_copy_can_be_retried(httpserver, register, qcow2_bytes):
    httpserver.expect_ordered_request("/d.qcow2").respond_with_data("x", status=404)
    httpserver.expect_ordered_request("/d.qcow2").respond_with_data(qcow2_bytes)
    template = register(url=httpserver.url_for("/d.qcow2"))
    assert store_copy_download(ref_id=copy_of(template).pk).download_state == "DOWNLOAD_ERROR"

    ref = store_copy_download(ref_id=copy_of(template).pk)

    assert ref.download_state == "DOWNLOADED"
    assert ref.attempts == 2
    states = list(
        Event.objects.filter(object_id=ref.pk, field="download_state")
        .order_by("id")
        .values_list("to_state", flat=True)
    )
    assert states == [
        "DOWNLOAD_IN_PROGRESS",
        "DOWNLOAD_ERROR",
        "DOWNLOAD_IN_PROGRESS",
        "DOWNLOADED",
    ]


def test_an_inactive_template_is_not_downloaded(httpserver, register, user, store):
    template = register(url=httpserver.url_for("/d.qcow2"))
    services.template_deactivate(template_id=template.pk, actor=user)
    ref = store_copy_download(ref_id=copy_of(template).pk)
    assert ref.download_state == "NOT_DOWNLOADED"
    assert httpserver.log == []


def test_a_live_lease_is_respected_and_an_expired_one_taken_over(httpserver, register, qcow2_bytes):
    from datetime import timedelta

    from django.utils import timezone

    httpserver.expect_request("/d.qcow2").respond_with_data(qcow2_bytes)
    template = register(url=httpserver.url_for("/d.qcow2"))
    ref = copy_of(template)
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        download_state="DOWNLOAD_IN_PROGRESS",
        state="CREATING",
        lease_owner="dead-worker",
        lease_expires_at=timezone.now() + timedelta(minutes=1),
    )
    assert store_copy_download(ref_id=ref.pk).lease_owner == "dead-worker"
    assert httpserver.log == []

    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert store_copy_download(ref_id=ref.pk).download_state == "DOWNLOADED"


def test_registration_queues_downloads_only_after_commit(
    register, django_capture_on_commit_callbacks, monkeypatch
):
    from templates_app import tasks

    sent = []
    monkeypatch.setattr(tasks.store_copy_download_task, "delay", lambda **kw: sent.append(kw))
    with django_capture_on_commit_callbacks(execute=True):
        template = register()
    assert sent == [{"ref_id": copy_of(template).pk}]


def test_sweep_deletes_downloaded_bytes_and_waits_for_a_down_store(
    httpserver, register, store, user, qcow2_bytes
):
    httpserver.expect_request("/d.qcow2").respond_with_data(qcow2_bytes)
    template = register(url=httpserver.url_for("/d.qcow2"))
    store_copy_download(ref_id=copy_of(template).pk)
    services.template_deactivate(template_id=template.pk, actor=user)
    real_path = store.path
    type(store).objects.filter(pk=store.pk).update(path="/nonexistent/store")

    services.gc_sweep()
    assert copy_of(template).state == "DESTROYING"
    assert files_under(store) != []

    type(store).objects.filter(pk=store.pk).update(path=real_path)
    services.gc_sweep()
    assert copy_of(template).state == "DESTROYED"
    assert files_under(store) == []
    template.account.refresh_from_db()
    assert template.account.used_secondary_bytes == 0
