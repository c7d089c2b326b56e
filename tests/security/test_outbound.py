"""Outbound requests stay outside: the attacks a tenant can aim at the storage worker and the KVM
hosts through a template's URL and HTTP header details, replayed against the real pieces.

The API registers (a tenant, staff, the CloudStack facade and the management command alike);
the storage worker's download service, the host's direct download and the host's URL check
fetch from real pytest-httpserver instances on 127.0.0.1 (loopback is allowed for them, as in
every test, with STENCIL_URL_ALLOW_LOOPBACK; their ports with STENCIL_URL_ALLOWED_PORTS, see
tests/conftest.py). A second server stands for the internal service an attack tries to reach:
it must see no request at all.
"""

import hashlib
import socket
import subprocess
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from pytest_httpserver import HTTPServer

from agents_app.agent.direct_download import DirectDownloadFailed, fetch_into_pool, url_check
from templates_app.copies import store_copy_download
from templates_app.images import urlsafety
from templates_app.images.downloader import NO_HTTP_ANSWER
from templates_app.models import Event, Template, TemplateDetail, TemplateStoreRef
from tests.cloudstack import call, keys_for

pytestmark = pytest.mark.django_db

LIST = "/api/v1/templates/"


@pytest.fixture(autouse=True)
def fast_and_loopback(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_URL_ALLOWED_NETWORKS = []
    settings.STENCIL_DOWNLOAD_BACKOFF_BASE = 0.01
    settings.STENCIL_DOWNLOAD_MAX_ATTEMPTS = 1
    settings.STENCIL_DOWNLOAD_CONNECT_TIMEOUT = 1
    settings.STENCIL_DOWNLOAD_READ_TIMEOUT = 1
    settings.STENCIL_DOWNLOAD_STALL_TIMEOUT = 1


@pytest.fixture
def image(tmp_path) -> bytes:
    path = tmp_path / "src.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), "1M"], check=True, capture_output=True
    )
    return path.read_bytes()


@pytest.fixture
def inside():
    """The internal service an attack aims at: a second server; it must see nothing."""
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.clear()
    server.stop()


def post(api, store, url: str, **fields):
    body = {"name": "t", "format": "QCOW2", "url": url, "zones": [str(store.zone.uuid)], **fields}
    return api.post(LIST, body, format="json")


def assert_refused(response, field: str, words: str) -> None:
    assert response.status_code == 400, response.data
    assert words in str(response.data[field]), response.data
    assert not Template.objects.exists()
    assert not Event.objects.exists()


# 1. URL rules: deny by default ---------------------------------------------------------------

DENIED = [
    # IPv6 ranges that carry an IPv4 address, the range itself and what it embeds
    ("http://[::ffff:10.0.0.1]/x.qcow2", "denied network 10.0.0.0/8"),
    ("http://[::ffff:198.51.100.3]/x.qcow2", "denied network ::ffff:0:0/96"),
    ("http://[::a00:1]/x.qcow2", "denied network ::/96"),
    ("http://[64:ff9b::a9fe:a9fe]/x.qcow2", "denied network 64:ff9b::/96"),
    ("http://[64:ff9b:1::a9fe:a9fe]/x.qcow2", "denied network 64:ff9b:1::/48"),
    ("http://[2002:a9fe:a9fe::1]/x.qcow2", "denied network 2002::/16"),
    ("http://[2001:0:a9fe:a9fe::1]/x.qcow2", "denied network 2001::/32"),
    # broadcast
    ("http://255.255.255.255/x.qcow2", "denied network 255.255.255.255/32"),
    # private ranges, in every spelling the resolver accepts
    ("http://10.0.0.1/x.qcow2", "denied network 10.0.0.0/8"),
    ("http://167772161/x.qcow2", "(10.0.0.1) is in denied network 10.0.0.0/8"),
    ("http://012.0.0.1/x.qcow2", "(10.0.0.1) is in denied network 10.0.0.0/8"),
    ("http://0xac100001/x.qcow2", "(172.16.0.1) is in denied network 172.16.0.0/12"),
    ("http://192.168.0.1/x.qcow2", "denied network 192.168.0.0/16"),
    ("http://100.64.0.1/x.qcow2", "denied network 100.64.0.0/10"),
    ("http://[fd00::1]/x.qcow2", "denied network fc00::/7"),
    # ports other than 80 and 443 (the tests allow only their servers' ephemeral range)
    ("http://198.51.100.3:8080/x.qcow2", "port 8080 is not allowed; allowed: 80, 443"),
    ("https://198.51.100.3:22/x.qcow2", "port 22 is not allowed"),
]


@pytest.mark.parametrize(("url", "rule"), DENIED, ids=[u for u, _ in DENIED])
def test_registration_refuses_what_the_url_rules_deny(api, store, url, rule):
    assert_refused(post(api, store, url), "url", rule)


def test_production_ports_are_80_and_443_only(api, store, settings):
    settings.STENCIL_URL_ALLOWED_PORTS = []
    assert_refused(post(api, store, "http://198.51.100.3:33000/x.qcow2"), "url", "port 33000")
    assert post(api, store, "https://198.51.100.3/x.qcow2").status_code == 201


@pytest.mark.parametrize("url", ["http://[::ffff:10.0.0.1]/x.qcow2", "http://10.0.0.1/x.qcow2"])
def test_one_rule_for_staff_cloudstack_and_the_command(
    admin_api, admin_user, account, user, store, url
):
    account.members.add(admin_user)  # staff registering for an account: the same rule
    assert_refused(post(admin_api, store, url), "url", "denied network 10.0.0.0/8")
    status, body = call(
        keys_for(user),
        "registerTemplate",
        name="t",
        format="QCOW2",
        hypervisor="KVM",
        url=url,
        zoneid=str(store.zone.uuid),
    )
    assert status == 431, body
    assert body["errortext"].startswith("url: URL host")
    assert "denied network 10.0.0.0/8" in body["errortext"]
    with pytest.raises(CommandError, match="denied network 10.0.0.0/8"):
        call_command(
            "register_template",
            "--name=t",
            f"--url={url}",
            "--format=QCOW2",
            f"--account={user.accounts.first().name}",
            f"--zone={store.zone.name}",
            stdout=StringIO(),
        )
    assert not Template.objects.exists()


def test_an_allowed_network_opens_a_mirror_but_not_what_an_address_embeds(api, store, settings):
    settings.STENCIL_URL_ALLOWED_NETWORKS = ["10.20.0.0/16", "64:ff9b::/96", "100.64.0.0/10"]
    assert post(api, store, "http://10.20.1.2/x.qcow2").status_code == 201
    # NAT64 of 10.20.1.2: allowed; NAT64 of the metadata address: its IPv4 is still checked.
    assert post(api, store, "http://[64:ff9b::a14:102]/x.qcow2").status_code == 201
    for url, rule in [
        ("http://10.21.0.1/x.qcow2", "denied network 10.0.0.0/8"),
        ("http://[64:ff9b::a9fe:a9fe]/x.qcow2", "(169.254.169.254) is in denied network"),
        ("http://100.100.100.200/x.qcow2", "denied network 100.100.100.200/32"),
    ]:
        refused = post(api, store, url)
        assert refused.status_code == 400, refused.data
        assert rule in str(refused.data["url"])
    assert Template.objects.count() == 2


# 2. Every hop, and every resolution -----------------------------------------------------------


def _redirect_to(httpserver, location: str) -> str:
    httpserver.expect_request("/x.qcow2").respond_with_data(
        "", status=302, headers={"Location": location}
    )
    return httpserver.url_for("/x.qcow2")


def _store_download(api, store, url: str) -> TemplateStoreRef:
    registered = post(api, store, url)
    assert registered.status_code == 201, registered.data
    ref = TemplateStoreRef.objects.get(template__uuid=registered.data["id"])
    return store_copy_download(ref_id=ref.pk)


@pytest.mark.parametrize("piece", ["store download", "direct download", "URL check"])
def test_a_redirect_to_a_denied_address_is_not_followed(
    api, store, httpserver, inside, image, tmp_path, piece
):
    """The first URL is fine (loopback is allowed here); its redirect names the internal
    server through the IPv4-mapped range, which Linux would connect to as 127.0.0.1."""
    inside.expect_request("/x.qcow2").respond_with_data(image)
    url = _redirect_to(httpserver, f"http://[::ffff:127.0.0.1]:{inside.port}/x.qcow2")
    if piece == "store download":
        ref = _store_download(api, store, url)
        assert ref.download_state == "DOWNLOAD_ERROR"
        error = ref.error_text
        assert not any(p.name.endswith(".qcow2") for p in Path(store.path).rglob("*"))
    elif piece == "direct download":
        with pytest.raises(DirectDownloadFailed) as failed:
            fetch_into_pool(url=url, pool_dir=tmp_path, checksum="", image_format="QCOW2")
        error = failed.value.message
        assert list(tmp_path.glob(".*part*")) == []
    else:
        answer = url_check(url=url)
        assert answer["ok"] is False
        error = answer["error"]
    assert "is in denied network ::ffff:0:0/96" in error
    assert inside.log == []


@pytest.fixture
def fake_dns(monkeypatch):
    """There is no DNS in this sandbox (and tests must not depend on one), so the resolver the
    URL rules call is replaced for the names below only: name -> addresses, as getaddrinfo would
    answer. Everything after resolution (checks, connection, HTTP) is real."""
    table: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in table:
            return real(host, port, *args, **kwargs)
        answers = []
        for address in table[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            answers.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return answers

    monkeypatch.setattr(urlsafety.socket, "getaddrinfo", getaddrinfo)
    return table


def test_a_name_with_one_private_address_is_refused_at_registration(api, store, fake_dns):
    fake_dns["mirror.test"] = ["198.51.100.3", "10.0.0.1"]
    assert_refused(
        post(api, store, "http://mirror.test/x.qcow2"),
        "url",
        "mirror.test (10.0.0.1) is in denied network 10.0.0.0/8",
    )


def test_a_name_that_rebinds_after_registration_is_checked_again_at_download(
    api, store, inside, image, fake_dns
):
    """Registration sees a public address; by download time the attacker's DNS answers with
    the internal server (as an IPv4-mapped AAAA record). The download checks the new answer
    and connects to nothing."""
    inside.expect_request("/x.qcow2").respond_with_data(image)
    fake_dns["rebind.test"] = ["198.51.100.3"]
    registered = post(api, store, f"http://rebind.test:{inside.port}/x.qcow2")
    assert registered.status_code == 201, registered.data
    fake_dns["rebind.test"] = ["::ffff:127.0.0.1"]

    ref = store_copy_download(ref_id=TemplateStoreRef.objects.get().pk)

    assert ref.download_state == "DOWNLOAD_ERROR"
    assert "rebind.test (127.0.0.1)" in ref.error_text or "::ffff:0:0/96" in ref.error_text
    assert "denied network ::ffff:0:0/96" in ref.error_text
    assert inside.log == []


# 3. The URL check is not a port scanner ------------------------------------------------------


class _Listener:
    """A TCP port on 127.0.0.1 that does one bad thing to every connection."""

    def __init__(self, behaviour: str):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.held: list[socket.socket] = []
        if behaviour == "refused":
            self.sock.close()  # nothing listens there any more
            return
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                conn.close()
            elif self.behaviour == "not HTTP":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
                conn.close()
            else:  # silent: accepts and never answers
                self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_refused_reset_silent_and_not_http_give_one_identical_message():
    listeners = [_Listener(b) for b in ("refused", "reset", "silent", "not HTTP")]
    try:
        answers = {
            (listener.behaviour, scheme): url_check(
                url=f"{scheme}://127.0.0.1:{listener.port}/x.qcow2"
            )
            for listener in listeners
            for scheme in ("http", "https")
        }
    finally:
        for listener in listeners:
            listener.close()
    assert all(answer["ok"] is False for answer in answers.values()), answers
    assert {answer["error"] for answer in answers.values()} == {NO_HTTP_ANSWER}, answers


# 4. HTTP header details ----------------------------------------------------------------------

BAD_HEADERS = [
    ("HTTP_HEADER", "Keep-Alive:timeout=5", "'Keep-Alive' cannot be set"),
    ("HTTP_HEADER:Trailer", "X-Sum", "'Trailer' cannot be set"),
    ("HTTP_HEADER", "proxy-connection:keep-alive", "'proxy-connection' cannot be set"),
    ("HTTP_HEADER", "te:trailers", "'te' cannot be set"),
    ("HTTP_HEADER", "RANGE:bytes=0-", "'RANGE' cannot be set"),
    ("HTTP_HEADER", "X-Token:caf\u00e9", "visible ASCII (RFC 9110 field-value)"),
    ("HTTP_HEADER", "X-Token:a\x7fb", "visible ASCII"),
    ("HTTP_HEADER", "X(Token):a", "not a valid HTTP header name (RFC 9110 token)"),
]


@pytest.mark.parametrize(("key", "value", "rule"), BAD_HEADERS, ids=[v for _, v, _ in BAD_HEADERS])
def test_a_bad_header_is_a_400_naming_details_and_the_rule(api, store, key, value, rule):
    response = post(
        api, store, "https://198.51.100.3/x.qcow2", details=[{"key": key, "value": value}]
    )
    assert_refused(response, "details", rule)


def test_a_bad_header_stored_before_the_rule_fails_the_download_not_the_task(
    api, store, httpserver, image
):
    """A row written before Keep-Alive was refused (here: straight into the table): the
    download ends in DOWNLOAD_ERROR naming the rule, and the header is never sent."""
    httpserver.expect_request("/x.qcow2").respond_with_data(image)
    registered = post(api, store, httpserver.url_for("/x.qcow2"))
    template = Template.objects.get(uuid=registered.data["id"])
    TemplateDetail.objects.create(template=template, key="HTTP_HEADER", value="Keep-Alive:1")

    ref = store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)

    assert ref.download_state == "DOWNLOAD_ERROR"
    assert "request header refused: HTTP header 'Keep-Alive' cannot be set" in ref.error_text
    assert httpserver.log == []


SECRETS = {"X-Token": "t0ken", "Authorization": "Bearer abc", "Cookie": "s=1", "X-Api-Key": "k"}


@pytest.mark.parametrize("piece", ["store download", "direct download", "URL check"])
def test_no_user_header_follows_a_redirect_to_another_origin(
    api, store, httpserver, inside, image, tmp_path, piece
):
    """Another port of the same address is another origin. What the tenant sent was meant for
    the first one; the downloader's own headers still go. (This held before this change too:
    the tests make sure every piece keeps it.)"""
    inside.expect_request("/x.qcow2").respond_with_data(image)
    url = _redirect_to(httpserver, inside.url_for("/x.qcow2"))
    if piece == "store download":
        details = [{"key": f"HTTP_HEADER:{k}", "value": v} for k, v in SECRETS.items()]
        registered = post(api, store, url, details=details)
        assert registered.status_code == 201, registered.data
        ref = store_copy_download(ref_id=TemplateStoreRef.objects.get().pk)
        assert ref.download_state == "DOWNLOADED", ref.error_text
    elif piece == "direct download":
        checksum = "{SHA-256}" + hashlib.sha256(image).hexdigest()
        fetched = fetch_into_pool(
            url=url, pool_dir=tmp_path, checksum=checksum, image_format="QCOW2", headers=SECRETS
        )
        assert fetched.size == len(image)
    else:
        assert url_check(url=url, headers=SECRETS)["ok"] is True
    [(first, _)] = httpserver.log
    [(followed, _)] = inside.log
    assert {k: first.headers.get(k) for k in SECRETS} == SECRETS
    assert [k for k in SECRETS if k in followed.headers] == []
    assert followed.headers["User-Agent"].startswith("stencil-downloader")
