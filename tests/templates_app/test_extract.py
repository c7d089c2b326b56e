"""Extract (download) a template: POST /templates/{id}/extract/ answers a signed URL that
Stencil serves from an image store, with real HTTP Range requests against a live server."""

import hashlib
import subprocess
from email.parser import BytesParser
from urllib.parse import urlsplit

import pytest
import requests

from templates_app.byte_ranges import parse_range
from templates_app.copies import store_copy_download
from templates_app.models import TemplateStoreRef

from .factories import ImageStoreFactory, ZoneFactory


@pytest.fixture
def image(httpserver, settings, tmp_path):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    path = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "16M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 256k", str(path)],
        check=True,
        capture_output=True,
    )
    data = path.read_bytes()
    httpserver.expect_request("/img.qcow2").respond_with_data(data)
    return httpserver.url_for("/img.qcow2"), "{SHA-256}" + hashlib.sha256(data).hexdigest(), data


@pytest.fixture
def ready_template(register, image):
    url, checksum, data = image
    template = register(url=url, checksum=checksum)
    ref = store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
    assert ref.state == "READY", ref.error_text
    return template, data


def extract_url(template) -> str:
    return f"/api/v1/templates/{template.uuid}/extract/"


def on(server_url: str, signed_url: str) -> str:
    """The signed URL as served by `server_url` (the API answers with the host it was asked)."""
    parts = urlsplit(signed_url)
    return f"{server_url}{parts.path}?{parts.query}"


@pytest.mark.django_db(transaction=True)
def test_the_signed_url_streams_the_file_with_ranges(live_server, api, ready_template, settings):
    template, data = ready_template
    size = len(data)

    answer = api.post(extract_url(template), {}, format="json")
    assert answer.status_code == 200, answer.data
    assert answer.data["state"] == "DOWNLOAD_URL_CREATED"
    url = on(live_server.url, answer.data["url"])

    whole = requests.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Accept-Ranges"] == "bytes"
    etag = whole.headers["ETag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"' and whole.headers["Last-Modified"]
    assert whole.headers["Content-Disposition"].startswith("attachment; filename=")

    first = requests.get(url, headers={"Range": "bytes=0-99"}, timeout=10)
    assert first.status_code == 206 and first.content == data[:100]
    assert first.headers["Content-Range"] == f"bytes 0-99/{size}"
    tail = requests.get(url, headers={"Range": "bytes=-10"}, timeout=10)
    assert tail.status_code == 206 and tail.content == data[-10:]
    rest = requests.get(url, headers={"Range": f"bytes={size - 5}-"}, timeout=10)
    assert rest.content == data[-5:] and rest.headers["Content-Range"].endswith(f"/{size}")

    several = requests.get(url, headers={"Range": "bytes=0-9,65536-65545"}, timeout=10)
    assert several.status_code == 206
    assert several.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    message = BytesParser().parsebytes(
        b"Content-Type: " + several.headers["Content-Type"].encode() + b"\r\n\r\n" + several.content
    )
    parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in message.get_payload()]
    assert parts == [
        (f"bytes 0-9/{size}", data[:10]),
        (f"bytes 65536-65545/{size}", data[65536:65546]),
    ]
    assert int(several.headers["Content-Length"]) == len(several.content)

    beyond = requests.get(url, headers={"Range": f"bytes={size}-"}, timeout=10)
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
    same = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert same.status_code == 304 and same.content == b""
    stale = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'}, timeout=10)
    assert stale.status_code == 200 and stale.content == data
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(size)

    tampered = requests.get(url.replace("signature=", "signature=0"), timeout=10)
    assert tampered.status_code == 403 and "signature" in tampered.json()["detail"]
    other_copy = requests.get(url.replace(f"/{answer.data['copy']['id']}/", "/999999/"), timeout=10)
    assert other_copy.status_code == 403, "the copy id is signed too"
    settings.STENCIL_EXTRACT_EXPIRY_SECONDS = -1
    expired = api.post(extract_url(template), {}, format="json").data["url"]
    late = requests.get(on(live_server.url, expired), timeout=10)
    assert late.status_code == 403 and "expired" in late.json()["detail"]


@pytest.mark.parametrize(
    ("header", "ranges"),
    [
        ("", None),
        ("items=0-1", None),
        ("bytes=5-1", None),
        ("bytes=a-b", None),
        ("bytes=0-0", [(0, 0)]),
        ("bytes=0-", [(0, 99)]),
        ("bytes=-1000", [(0, 99)]),
        ("bytes=90-200", [(90, 99)]),
        ("bytes=100-", []),
        ("bytes=-0", []),
        ("bytes= 1-2 , 5-6", [(1, 2), (5, 6)]),
        ("bytes=" + ",".join(["0-0"] * 65), None),
    ],
)
def test_range_headers(header, ranges):
    assert parse_range(header, 100) == ranges


@pytest.mark.django_db
def test_only_the_owner_and_staff_may_extract(api, other_api, admin_api, register, ready_template):
    template, _ = ready_template
    from templates_app import services

    services.template_update(template_id=template.pk, actor=None, changes={"is_public": True})

    assert other_api.post(extract_url(template), {}, format="json").status_code == 404
    assert admin_api.post(extract_url(template), {}, format="json").status_code == 200
    assert api.post(extract_url(template), {}, format="json").status_code == 200


@pytest.mark.django_db
def test_a_zone_the_template_is_not_in_is_400_naming_zone(api, ready_template):
    template, _ = ready_template
    elsewhere = ZoneFactory(name="zone-b")

    response = api.post(extract_url(template), {"zone": str(elsewhere.uuid)}, format="json")

    assert response.status_code == 400
    assert "not in zone 'zone-b'" in str(response.data["zone"])


@pytest.mark.django_db
def test_a_direct_download_template_is_copied_into_a_store_first(
    api, register, image, store, client
):
    url, checksum, data = image
    template = register(url=url, checksum=checksum, direct_download=True)

    pending = api.post(extract_url(template), {}, format="json")
    again = api.post(extract_url(template), {}, format="json")

    assert pending.status_code == again.status_code == 202, pending.data
    assert pending.data["state"] == "COPYING_TO_STORE" and pending.data["url"] is None
    assert pending.data["copy"]["download_state"] == "NOT_DOWNLOADED"
    assert again.data["copy"]["id"] == pending.data["copy"]["id"], "one copy, however often"
    copy = TemplateStoreRef.objects.get(template=template, store=store)
    assert store_copy_download(ref_id=copy.pk).state == "READY"  # what the storage worker does
    ready = api.post(extract_url(template), {}, format="json")
    assert ready.status_code == 200 and ready.data["copy"]["id"] == copy.pk
    parts = urlsplit(ready.data["url"])
    response = client.get(f"{parts.path}?{parts.query}", HTTP_RANGE="bytes=10-19")
    assert response.status_code == 206
    assert b"".join(response.streaming_content) == data[10:20]
    bypassed = TemplateStoreRef.objects.get(template=template, store__isnull=True)
    assert bypassed.download_state == "BYPASSED", "hosts still fetch the URL themselves"


@pytest.mark.django_db
def test_a_deleted_template_without_a_ready_copy_is_409(api, register, user):
    template = register()
    api.delete(f"/api/v1/templates/{template.uuid}/")

    response = api.post(extract_url(template), {}, format="json")

    assert response.status_code == 409
    assert "no READY copy" in response.data["detail"]


@pytest.mark.django_db
def test_a_second_zone_store_is_used_when_asked(api, ready_template, tmp_path):
    template, data = ready_template
    zone_b = ZoneFactory(name="zone-b")
    (tmp_path / "b").mkdir()
    ImageStoreFactory(zone=zone_b, name="store-b", path=str(tmp_path / "b"))
    from templates_app import services

    services.template_zones_add(template_id=template.pk, zones=[zone_b], actor=None)
    copy = TemplateStoreRef.objects.get(template=template, store__zone=zone_b)
    pending = api.post(extract_url(template), {"zone": str(zone_b.uuid)}, format="json")
    store_copy_download(ref_id=copy.pk)
    ready = api.post(extract_url(template), {"zone": str(zone_b.uuid)}, format="json")

    assert pending.status_code == 202 and pending.data["zone_name"] == "zone-b"
    assert ready.status_code == 200 and ready.data["copy"]["id"] == copy.pk


@pytest.mark.django_db
def test_a_direct_download_template_with_no_store_up_is_400_naming_zone(api, register, store):
    template = register(direct_download=True, checksum="{MD5}" + "0" * 32)
    from templates_app.models import ImageStore

    ImageStore.objects.filter(pk=store.pk).update(state="DISABLED")

    response = api.post(extract_url(template), {"zone": str(store.zone.uuid)}, format="json")

    assert response.status_code == 400
    assert "no image store that is up" in str(response.data["zone"])
    assert not TemplateStoreRef.objects.filter(template=template, store__isnull=False).exists()
