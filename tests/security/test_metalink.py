"""Metalinks are hostile input: one that cannot be parsed is a 400 at registration naming the
problem (never a 500), its hash becomes the template's checksum and is what the download is
checked against, and a metalink with no hash on a template with no checksum is refused.

A real pytest-httpserver serves the metalink documents and the image; the API registers them.
"""

import hashlib
import subprocess
from pathlib import Path

import pytest

from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.agent.direct_download import url_check
from agents_app.agent.vms import vm_deploy_on_host
from agents_app.models import PrimaryPool, TemplatePoolRef
from templates_app.models import Event, Template
from tests import libvirt_backends

pytestmark = pytest.mark.django_db

LIST = "/api/v1/templates/"


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_DOWNLOAD_BACKOFF_BASE = 0.01


@pytest.fixture
def image(tmp_path) -> bytes:
    path = tmp_path / "ml.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), "16M"], check=True, capture_output=True
    )
    return path.read_bytes()


def metalink(files: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<metalink xmlns="urn:ietf:params:xml:ns:metalink">{files}</metalink>'
    ).encode()


def one_file(*urls: tuple[str, str], hashes: str = "") -> bytes:
    entries = "".join(f'<url priority="{priority}">{url}</url>' for url, priority in urls)
    return metalink(f'<file name="ml.qcow2">{hashes}{entries}</file>')


def sha256_hash(data: bytes) -> str:
    return f'<hash type="sha-256">{hashlib.sha256(data).hexdigest()}</hash>'


def register(api, zone, url: str, **overrides):
    body = {
        "name": "ml",
        "format": "QCOW2",
        "url": url,
        "zones": [str(zone.uuid)],
        "direct_download": True,
        **overrides,
    }
    return api.post(LIST, body, format="json")


def assert_refused(response, field: str, words: str) -> None:
    assert response.status_code == 400, response.data
    assert words in str(response.data[field]), response.data
    assert not Template.objects.exists()
    assert not Event.objects.exists()


def serve(httpserver, body: bytes, path: str = "/ml.meta4") -> str:
    httpserver.expect_request(path).respond_with_data(
        body, content_type="application/metalink4+xml"
    )
    return httpserver.url_for(path)


@pytest.mark.parametrize("priority", ["high", "0", "1000000", "-3", ""])
def test_a_bad_priority_is_a_400_naming_it(api, zone, httpserver, priority):
    url = serve(httpserver, one_file((httpserver.url_for("/a.qcow2"), priority)))
    assert_refused(register(api, zone, url), "url", "priority")


@pytest.mark.parametrize(
    "hashes, words",
    [
        ('<hash type="sha-256">not-hex</hash>', "sha-256 hash 'not-hex'"),
        ('<hash type="sha-256">abcd</hash>', "64 hex digits"),
        ('<hash type="md5"></hash>', "md5 hash"),
    ],
    ids=["not-hex", "short", "empty"],
)
def test_bad_hash_text_is_a_400_naming_it(api, zone, httpserver, hashes, words):
    url = serve(httpserver, one_file((httpserver.url_for("/a.qcow2"), "1"), hashes=hashes))
    assert_refused(register(api, zone, url), "url", words)


def test_no_usable_mirror_is_a_400(api, zone, httpserver, settings):
    settings.STENCIL_URL_DENIED_NETWORKS = ["169.254.0.0/16"]
    body = one_file(
        ("file:///etc/passwd", "1"),
        ("http://169.254.169.254/latest/meta-data", "2"),
        ("https://mirror.example/x.torrent", "3"),
        hashes=sha256_hash(b"x"),
    )
    assert_refused(register(api, zone, serve(httpserver, body)), "url", "no usable mirror")


@pytest.mark.parametrize(
    "body, words",
    [
        (b"<metalink><file>", "ParseError"),
        (b"<html>not a metalink</html>", "not a <metalink>"),
        (
            b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b"<metalink><file><url>&xxe;</url></file></metalink>",
            "metalink refused",
        ),
    ],
    ids=["truncated", "not-metalink", "external-entity"],
)
def test_a_document_that_is_not_a_metalink_is_a_400(api, zone, httpserver, body, words):
    assert_refused(register(api, zone, serve(httpserver, body)), "url", words)


def test_two_files_are_refused(api, zone, httpserver):
    mirror = httpserver.url_for("/a.qcow2")
    body = metalink(
        f'<file name="a"><url>{mirror}</url></file><file name="b"><url>{mirror}</url></file>'
    )
    assert_refused(register(api, zone, serve(httpserver, body)), "url", "2 files")


def test_a_metalink_that_cannot_be_fetched_is_a_400(api, zone, httpserver):
    httpserver.expect_request("/gone.meta4").respond_with_data("no", status=404)
    response = register(api, zone, httpserver.url_for("/gone.meta4"))
    assert_refused(response, "url", "metalink cannot be fetched")


def test_no_hash_and_no_checksum_is_refused(api, zone, httpserver):
    url = serve(httpserver, one_file((httpserver.url_for("/a.qcow2"), "1")))
    assert_refused(register(api, zone, url), "checksum", "lists no file hash")


def test_piece_hashes_are_not_a_file_hash(api, zone, httpserver):
    pieces = '<pieces length="1024" type="sha-1"><hash>' + "ab" * 20 + "</hash></pieces>"
    url = serve(httpserver, one_file((httpserver.url_for("/a.qcow2"), "1"), hashes=pieces))
    assert_refused(register(api, zone, url), "checksum", "lists no file hash")


def test_a_metalink_is_for_direct_download_only(api, zone, store, httpserver, image):
    url = serve(
        httpserver, one_file((httpserver.url_for("/a.qcow2"), "1"), hashes=sha256_hash(image))
    )
    assert_refused(register(api, zone, url, direct_download=False), "url", "direct_download=true")


def test_the_strongest_hash_becomes_the_checksum(api, zone, httpserver, image):
    hashes = (
        f'<hash type="md5">{hashlib.md5(image).hexdigest()}</hash>'
        f'<hash type="sha-512">{hashlib.sha512(image).hexdigest()}</hash>' + sha256_hash(image)
    )
    url = serve(httpserver, one_file((httpserver.url_for("/a.qcow2"), "1"), hashes=hashes))
    response = register(api, zone, url)
    assert response.status_code == 201, response.data
    assert response.data["checksum"] == "{SHA-512}" + hashlib.sha512(image).hexdigest()


def test_a_checksum_given_at_registration_is_kept(api, zone, httpserver, image):
    mine = "{SHA-256}" + "cd" * 32
    url = serve(
        httpserver, one_file((httpserver.url_for("/a.qcow2"), "1"), hashes=sha256_hash(image))
    )
    response = register(api, zone, url, checksum=mine)
    assert response.status_code == 201, response.data
    assert Template.objects.get().checksum == mine


@pytest.fixture
def host_pool(zone, tmp_path):
    with libvirt_backends.open_backend("test", tmp_path) as backend:
        host = heartbeat.host_register(name="kvm-ml", zone=zone, libvirt_uri=backend.uri)
        pool = PrimaryPool.objects.create(
            zone=zone,
            name="pool-ml",
            libvirt_pool_name=backend.pool_name,
            path=str(backend.pool_dir),
        )
        pool.hosts.add(host)
        yield pool


def test_the_registered_hash_is_checked_at_download_even_if_the_metalink_changes(
    api, zone, account, user, httpserver, image, host_pool
):
    """The attack: register a metalink whose hash matches a good image, then swap both the
    mirror's bytes and the metalink's hash. The download is checked against the hash stored at
    registration, so the swapped image never reaches the pool."""
    mirror = httpserver.url_for("/a.qcow2")
    good = one_file((mirror, "1"), hashes=sha256_hash(image))
    httpserver.expect_ordered_request("/ml.meta4").respond_with_data(good)
    response = register(api, zone, httpserver.url_for("/ml.meta4"))
    assert response.status_code == 201, response.data
    template = Template.objects.get()
    assert template.checksum == "{SHA-256}" + hashlib.sha256(image).hexdigest()

    evil = image[:-1] + b"\x01"
    httpserver.expect_request("/ml.meta4").respond_with_data(
        one_file((mirror, "1"), hashes=sha256_hash(evil))
    )
    httpserver.expect_request("/a.qcow2").respond_with_data(evil)
    vm = vm_services.vm_deploy(
        name="ml", template_id=template.pk, zone=zone, account=account, actor=user
    )
    vm = vm_deploy_on_host(vm_id=vm.pk)

    assert vm.state == "ERROR"
    assert "checksum mismatch" in vm.error_text
    assert TemplatePoolRef.objects.get(template=template).state == "DOWNLOAD_ERROR"
    assert sorted(p.name for p in Path(host_pool.path).iterdir()) == []


def test_the_hosts_url_check_answers_a_bad_metalink_instead_of_crashing(httpserver):
    url = serve(httpserver, one_file((httpserver.url_for("/a.qcow2"), "soon")))
    answer = url_check(url=url)
    assert answer["ok"] is False
    assert "priority 'soon'" in answer["error"]
