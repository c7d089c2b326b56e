"""Direct download (seed 003): the host fetches the template straight into the pool at deploy.

Real HTTP servers on 127.0.0.1, real qemu-img images, the libvirt test driver with a real pool
directory.
"""

import hashlib
import subprocess
from pathlib import Path

import pytest
from werkzeug import Response

from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.agent.vms import vm_deploy_on_host
from agents_app.models import PrimaryPool, TemplatePoolRef
from templates_app.images.metalink import MetalinkRefused, parse_metalink
from templates_app.models import TemplateStoreRef
from tests import libvirt_backends

pytestmark = pytest.mark.django_db


@pytest.fixture
def image(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("dd") / "dd.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), "16M"], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(path)],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


@pytest.fixture
def host_pool(zone, tmp_path, settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_DOWNLOAD_BACKOFF_BASE = 0.01
    with libvirt_backends.open_backend("test", tmp_path) as backend:
        host = heartbeat.host_register(name="kvm-dd", zone=zone, libvirt_uri=backend.uri)
        pool = PrimaryPool.objects.create(
            zone=zone,
            name="pool-dd",
            libvirt_pool_name=backend.pool_name,
            path=str(backend.pool_dir),
        )
        pool.hosts.add(host)
        yield pool


def sha256(data: bytes) -> str:
    return "{SHA-256}" + hashlib.sha256(data).hexdigest()


def deploy(template, zone, account, user):
    vm = vm_services.vm_deploy(
        name="dd", template_id=template.pk, zone=zone, account=account, actor=user
    )
    return vm_deploy_on_host(vm_id=vm.pk)


def pool_files(pool) -> list[str]:
    return sorted(p.name for p in Path(pool.path).iterdir())


def test_registration_makes_a_bypassed_row_and_deploy_downloads_into_the_pool(
    httpserver, register, host_pool, image, zone, account, user
):
    httpserver.expect_request("/dd.qcow2").respond_with_data(image)
    template = register(
        url=httpserver.url_for("/dd.qcow2"), checksum=sha256(image), direct_download=True
    )
    ref = TemplateStoreRef.objects.get(template=template)
    assert (ref.store, ref.download_state, ref.state) == (None, "BYPASSED", "READY")

    vm = deploy(template, zone, account, user)

    assert vm.state == "RUNNING", vm.error_text
    copy = TemplatePoolRef.objects.get(template=template, pool=host_pool)
    assert (copy.state, copy.download_percent) == ("DOWNLOADED", 100)
    assert Path(copy.install_path).read_bytes() == image
    assert pool_files(host_pool) == sorted(
        [Path(copy.install_path).name, Path(vm.root_disk_path).name]
    )


def test_wrong_checksum_is_retried_then_fails_with_no_file(
    httpserver, register, host_pool, image, zone, account, user
):
    httpserver.expect_request("/dd.qcow2").respond_with_data(image)
    template = register(
        url=httpserver.url_for("/dd.qcow2"), checksum="{SHA-256}" + "0" * 64, direct_download=True
    )

    vm = deploy(template, zone, account, user)

    assert vm.state == "ERROR"
    assert "checksum mismatch" in vm.error_text
    assert "after 3 downloads" in vm.error_text
    assert len(httpserver.log) == 3
    copy = TemplatePoolRef.objects.get(template=template)
    assert copy.state == "DOWNLOAD_ERROR"
    assert pool_files(host_pool) == []
    template.refresh_from_db()
    assert template.state == "ACTIVE", "the template stays usable for a later try"


def test_wrong_bytes_then_right_bytes_succeeds(
    httpserver, register, host_pool, image, zone, account, user
):
    httpserver.expect_ordered_request("/dd.qcow2").respond_with_data(image[:-1] + b"\x01")
    httpserver.expect_ordered_request("/dd.qcow2").respond_with_data(image)
    template = register(
        url=httpserver.url_for("/dd.qcow2"), checksum=sha256(image), direct_download=True
    )
    assert deploy(template, zone, account, user).state == "RUNNING"


def metalink(*urls: tuple[str, int], hash_hex: str = "") -> bytes:
    entries = "".join(f'<url priority="{priority}">{url}</url>' for url, priority in urls)
    hashes = f'<hash type="sha-256">{hash_hex}</hash>' if hash_hex else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink">'
        f'<file name="dd.qcow2">{hashes}{entries}</file></metalink>'
    ).encode()


def test_metalink_with_a_dead_first_mirror_uses_the_next_and_its_hash(
    httpserver, register, host_pool, image, zone, account, user
):
    httpserver.expect_request("/dead.qcow2").respond_with_data("gone", status=404)
    httpserver.expect_request("/live.qcow2").respond_with_data(image)
    body = metalink(
        (httpserver.url_for("/dead.qcow2"), 1),
        (httpserver.url_for("/live.qcow2"), 2),
        ("https://mirror.example/x.torrent", 0),
        hash_hex=hashlib.sha256(image).hexdigest(),
    )
    httpserver.expect_request("/dd.meta4").respond_with_data(body)
    template = register(url=httpserver.url_for("/dd.meta4"), direct_download=True)

    vm = deploy(template, zone, account, user)

    assert vm.state == "RUNNING", vm.error_text
    copy = TemplatePoolRef.objects.get(template=template)
    assert Path(copy.install_path).read_bytes() == image


def test_metalink_listing_only_file_and_denied_addresses_fails_cleanly(
    httpserver, register, host_pool, zone, account, user, settings
):
    """Registration saw a usable metalink; by deploy time it lists only refused mirrors."""
    settings.STENCIL_URL_DENIED_NETWORKS = ["169.254.0.0/16", "10.9.9.9/32"]
    usable = metalink((httpserver.url_for("/dd.qcow2"), 1), hash_hex="ab" * 32)
    httpserver.expect_ordered_request("/dd.metalink").respond_with_data(usable)
    template = register(url=httpserver.url_for("/dd.metalink"), direct_download=True)
    body = metalink(
        ("file:///etc/passwd", 1),
        ("http://169.254.169.254/latest", 2),
        ("http://10.9.9.9/x.qcow2", 3),
    )
    httpserver.expect_request("/dd.metalink").respond_with_data(body)

    vm = deploy(template, zone, account, user)

    assert vm.state == "ERROR"
    assert "no usable mirror" in vm.error_text
    assert pool_files(host_pool) == []


@pytest.mark.parametrize(
    "hostile",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        b"<metalink><file><url>&lol3;</url></file></metalink>",
        b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<metalink><file><url>&xxe;</url></file></metalink>",
    ],
    ids=["billion-laughs", "external-entity"],
)
def test_hostile_metalinks_are_refused(hostile):
    with pytest.raises(MetalinkRefused, match="metalink refused"):
        parse_metalink(hostile)


def test_redirect_to_a_denied_address_fails(
    httpserver, register, host_pool, zone, account, user, settings
):
    settings.STENCIL_URL_DENIED_NETWORKS = ["127.0.0.2/32"]
    httpserver.expect_request("/dd.qcow2").respond_with_response(
        Response(status=302, headers={"Location": "http://127.0.0.2/x"})
    )
    template = register(
        url=httpserver.url_for("/dd.qcow2"), checksum="{MD5}" + "0" * 32, direct_download=True
    )
    vm = deploy(template, zone, account, user)
    assert vm.state == "ERROR"
    assert "127.0.0.2" in vm.error_text
    assert pool_files(host_pool) == []


def test_https_direct_download_trusts_the_certificates_installed_on_the_host(
    register, host_pool, image, zone, account, user, admin_user, settings, tmp_path
):
    """Fails while the mirror's CA is unknown to the host; works once it is installed there."""
    import ssl

    import trustme
    from pytest_httpserver import HTTPServer

    from agents_app.agent.trust import certificate_install_on_host
    from agents_app.certificates import certificate_upload

    settings.STENCIL_AGENT_TRUST_ROOT = tmp_path / "trust"
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    try:
        server.expect_request("/dd.qcow2").respond_with_data(image)
        template = register(
            url=f"https://127.0.0.1:{server.port}/dd.qcow2",
            checksum=sha256(image),
            direct_download=True,
        )

        refused = deploy(template, zone, account, user)
        assert refused.state == "ERROR"
        assert "certificate" in refused.error_text.lower()

        certificate = certificate_upload(
            alias="mirror-ca", pem=ca.cert_pem.bytes().decode(), zone=zone, actor=admin_user
        )
        certificate_install_on_host(host_name="kvm-dd", certificate_id=certificate.pk)
        assert deploy(template, zone, account, user).state == "RUNNING"
    finally:
        server.clear()
        server.stop()


def test_url_check_reports_size_type_and_qcow2_virtual_size(httpserver, image, settings):
    from agents_app.agent.direct_download import url_check

    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    httpserver.expect_request("/dd.qcow2").respond_with_data(
        image, content_type="application/octet-stream"
    )
    result = url_check(url=httpserver.url_for("/dd.qcow2"))
    assert result["ok"], result
    check = result["checks"][0]
    assert check["virtual_size"] == 16 * 1024 * 1024
    assert check["content_type"] == "application/octet-stream"
    assert check["size"] in (len(image), None)


def test_url_check_of_a_dead_url_says_why(httpserver, settings):
    from agents_app.agent.direct_download import url_check

    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    httpserver.expect_request("/gone").respond_with_data("no", status=404)
    result = url_check(url=httpserver.url_for("/gone"))
    assert not result["ok"]
    assert "404" in result["error"]


def test_url_check_of_a_metalink_checks_every_mirror(httpserver, image, settings):
    from agents_app.agent.direct_download import url_check

    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    httpserver.expect_request("/a.qcow2").respond_with_data(image)
    httpserver.expect_request("/b.qcow2").respond_with_data("x", status=503)
    digest = hashlib.sha256(image).hexdigest()
    body = metalink(
        (httpserver.url_for("/a.qcow2"), 1), (httpserver.url_for("/b.qcow2"), 2), hash_hex=digest
    )
    httpserver.expect_request("/m.meta4").respond_with_data(body)
    result = url_check(url=httpserver.url_for("/m.meta4"))
    assert result["ok"]
    assert result["checksum"] == "{SHA-256}" + digest
    assert len(result["checks"]) == 1
    assert "503" in result["unreachable_mirrors"][0]


def test_a_transient_failure_moves_the_deploy_to_another_host_of_the_pool(
    httpserver,
    register,
    host_pool,
    image,
    zone,
    account,
    user,
    tmp_path,
    django_capture_on_commit_callbacks,
    monkeypatch,
):
    from agents_app.agent import tasks
    from agents_app.models import VirtualMachine

    first_registered = host_pool.hosts.get()
    second = heartbeat.host_register(
        name="kvm-dd-2", zone=zone, libvirt_uri=first_registered.libvirt_uri
    )
    host_pool.hosts.add(second)
    httpserver.expect_ordered_request("/dd.qcow2").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/dd.qcow2").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/dd.qcow2").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/dd.qcow2").respond_with_data("busy", status=503)
    httpserver.expect_request("/dd.qcow2").respond_with_data(image)
    template = register(
        url=httpserver.url_for("/dd.qcow2"), checksum=sha256(image), direct_download=True
    )
    sent = []
    monkeypatch.setattr(
        tasks.vm_deploy_task, "apply_async", lambda kwargs, queue: sent.append((kwargs, queue))
    )
    vm = vm_services.vm_deploy(
        name="dd", template_id=template.pk, zone=zone, account=account, actor=user
    )
    first_host = vm.host

    with django_capture_on_commit_callbacks(execute=True):
        moved = vm_deploy_on_host(vm_id=vm.pk)

    other = second if first_host == first_registered else first_registered
    assert moved.state == "STARTING"
    assert "503" in moved.error_text
    assert sent == [({"vm_id": vm.pk}, other.queue)]
    assert VirtualMachine.objects.get(pk=vm.pk).host == other
    assert pool_files(host_pool) == []

    done = vm_deploy_on_host(vm_id=vm.pk)
    assert done.state == "RUNNING", done.error_text
