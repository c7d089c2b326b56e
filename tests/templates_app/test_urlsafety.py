"""The outbound URL rules: what validate_url refuses, what it lets through, and where it connects.

No test here connects anywhere: validate_url resolves names but never opens a socket.
"""

import importlib
import re
import socket

import pytest

from templates_app.errors import InvalidInput
from templates_app.images import urlsafety
from templates_app.images.urlsafety import (
    DEFAULT_DENIED_NETWORKS,
    HostNotResolved,
    ResolvedTarget,
    UnsafeUrl,
    validate_url,
)


@pytest.fixture(autouse=True)
def default_rules(settings):
    """The shipped defaults, whatever the environment of the test run says."""
    settings.STENCIL_URL_DENIED_NETWORKS = list(DEFAULT_DENIED_NETWORKS)
    settings.STENCIL_URL_ALLOWED_NETWORKS = []
    # Any port, so that these tests see the address rules; the port tests set their own.
    settings.STENCIL_URL_ALLOWED_PORTS = ["1-65535"]
    settings.STENCIL_URL_ALLOW_LOOPBACK = False


@pytest.fixture
def fake_dns(monkeypatch):
    """Stand-in for DNS, which this sandbox has none of: name -> addresses, as getaddrinfo gives.

    The mock replaces the resolver validate_url calls; everything after resolution is real.
    """
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


BAD_URLS = [
    # scheme
    ("file:///etc/passwd", "unsupported URL scheme 'file'; allowed: http, https"),
    ("ftp://mirror.example/x.iso", "unsupported URL scheme 'ftp'"),
    ("gopher://10.0.0.1:70/", "unsupported URL scheme 'gopher'"),
    ("//mirror.example/x", "unsupported URL scheme '(none)'"),
    ("javascript:alert(1)", "unsupported URL scheme 'javascript'"),
    # userinfo
    ("http://user:secret@10.1.2.3/x", "must not contain credentials"),
    ("http://user@10.1.2.3/x", "must not contain credentials"),
    ("http://mirror.example@127.0.0.1/x", "must not contain credentials"),
    # host and form
    ("http:///x", "URL has no host"),
    ("http://", "URL has no host"),
    ("http://a..b/x", "invalid host name"),
    ("http://10.1.2.3/a b", "spaces or control characters"),
    ("http://10.1.2.3/a\r\nX-Injected: 1", "spaces or control characters"),
    ("http://10.1.2.3:99999/", "malformed URL"),
    ("http://10.1.2.3:0/", "port 0 is not allowed"),
    ("http://[fe80::1%25eth0]/", "zone identifiers"),
    ("http://[not-ipv6]/", "malformed URL"),
    # every spelling of loopback
    ("http://127.0.0.1/", "URL host 127.0.0.1 is in denied network 127.0.0.0/8"),
    ("http://127.0.0.1:8000/", "denied network 127.0.0.0/8"),
    ("http://127.255.255.254/", "denied network 127.0.0.0/8"),
    ("http://2130706433/", "URL host 2130706433 (127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://0x7f000001/", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://0x7F.0.0.1/", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://0177.0.0.1/", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://0177.1/", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://127.1/", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://127.0.1/", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://127.0.0.1./", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://[::1]/", "URL host ::1 is in denied network ::1/128"),
    ("http://[0:0:0:0:0:0:0:1]:8080/", "is in denied network ::1/128"),
    ("http://[::ffff:127.0.0.1]/", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    ("http://[::ffff:7f00:1]/", "(127.0.0.1) is in denied network 127.0.0.0/8"),
    # metadata services, link-local, "this host", multicast
    ("http://169.254.169.254/latest/meta-data/", "denied network 169.254.0.0/16"),
    ("http://2852039166/latest/", "(169.254.169.254) is in denied network 169.254.0.0/16"),
    ("http://[::ffff:169.254.169.254]/", "denied network 169.254.0.0/16"),
    ("http://100.100.100.200/", "denied network 100.100.100.200/32"),
    ("http://[fd00:ec2::254]/", "denied network fd00:ec2::254/128"),
    ("http://[fe80::1]/", "denied network fe80::/10"),
    ("http://0.0.0.0/", "denied network 0.0.0.0/8"),
    ("http://0/", "(0.0.0.0) is in denied network 0.0.0.0/8"),
    ("http://[::]/", "denied network ::/96"),
    ("http://224.0.0.1/", "denied network 224.0.0.0/4"),
    ("http://[ff02::1]/", "denied network ff00::/8"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS, ids=[u for u, _ in BAD_URLS])
def test_bad_urls_are_refused_naming_the_rule(url, message):
    with pytest.raises(UnsafeUrl) as caught:
        validate_url(url)
    assert message in caught.value.message
    assert caught.value.field == "url"
    assert isinstance(caught.value, InvalidInput)
    assert caught.value.as_payload()["url"] == [caught.value.message]


GOOD_URLS = [
    ("http://198.51.100.3/x", "198.51.100.3", 80, "/x"),
    ("https://198.51.100.3/x.qcow2?sig=abc", "198.51.100.3", 443, "/x.qcow2?sig=abc"),
    ("HTTP://203.0.113.20:8080", "203.0.113.20", 8080, "/"),
    ("http://198.51.100.4/a/b#fragment", "198.51.100.4", 80, "/a/b"),
    ("http://[2001:db8::1]:8000/img", "2001:db8::1", 8000, "/img"),
    ("http://3325256707/x", "198.51.100.3", 80, "/x"),  # a numeric spelling of an allowed address
    ("http://93.184.216.34/%7Efoo/x%20y", "93.184.216.34", 80, "/%7Efoo/x%20y"),
]


@pytest.mark.parametrize(("url", "address", "port", "target"), GOOD_URLS)
def test_good_urls_resolve_to_the_address_to_connect_to(url, address, port, target):
    resolved = validate_url(url)
    assert isinstance(resolved, ResolvedTarget)
    assert resolved.address == address
    assert resolved.port == port
    assert resolved.request_target == target
    assert resolved.scheme in ("http", "https")
    assert "#" not in resolved.url


def test_private_address_is_allowed_by_the_operator_without_connecting(settings):
    with pytest.raises(UnsafeUrl, match="denied network 10.0.0.0/8"):
        validate_url("http://10.1.2.3/x")
    settings.STENCIL_URL_ALLOWED_NETWORKS = ["10.1.0.0/16"]
    resolved = validate_url("http://10.1.2.3/x")
    assert resolved == ResolvedTarget(
        url="http://10.1.2.3/x",
        scheme="http",
        host="10.1.2.3",
        port=80,
        address="10.1.2.3",
        request_target="/x",
    )


def test_ipv6_literal_keeps_brackets_in_the_url_only():
    resolved = validate_url("https://[2001:db8::7]:8443/a")
    assert resolved.host == "2001:db8::7"
    assert resolved.address == "2001:db8::7"
    assert resolved.url == "https://[2001:db8::7]:8443/a"


def test_name_resolving_to_a_denied_address_is_refused(fake_dns):
    fake_dns["evil.example"] = ["127.0.0.1"]
    with pytest.raises(UnsafeUrl, match=r"evil.example \(127.0.0.1\) is in denied network"):
        validate_url("http://evil.example/disk.qcow2")


def test_one_denied_address_among_several_is_enough_to_refuse(fake_dns):
    # A name that answers with a public and a metadata address: connecting to "the other one"
    # later is exactly what rebinding attacks rely on, so the whole name is refused.
    fake_dns["mixed.example"] = ["93.184.216.34", "169.254.169.254"]
    with pytest.raises(UnsafeUrl, match="denied network 169.254.0.0/16"):
        validate_url("http://mixed.example/")


def test_name_resolving_to_a_mapped_ipv6_loopback_is_refused(fake_dns):
    fake_dns["mapped.example"] = ["::ffff:127.0.0.1"]
    with pytest.raises(UnsafeUrl, match="denied network 127.0.0.0/8"):
        validate_url("http://mapped.example/")


def test_a_name_is_resolved_once_and_the_first_address_is_pinned(fake_dns, monkeypatch):
    fake_dns["mirror.example"] = ["198.51.100.7", "198.51.100.8"]
    calls = []
    fake = urlsafety.socket.getaddrinfo

    def counting(*args, **kwargs):
        calls.append(args[0])
        return fake(*args, **kwargs)

    monkeypatch.setattr(urlsafety.socket, "getaddrinfo", counting)
    resolved = validate_url("https://Mirror.Example/debian.qcow2")
    assert calls == ["mirror.example"]
    assert resolved.host == "mirror.example"
    assert resolved.address == "198.51.100.7"
    assert resolved.url == "https://mirror.example/debian.qcow2"


def test_unicode_host_is_idna_encoded_and_path_is_percent_encoded(fake_dns):
    fake_dns["xn--bcher-kva.example"] = ["198.51.100.9"]
    resolved = validate_url("http://Bücher.example/ä.iso?q=ü")
    assert resolved.host == "xn--bcher-kva.example"
    assert resolved.request_target == "/%C3%A4.iso?q=%C3%BC"
    assert resolved.address == "198.51.100.9"


def test_unknown_name_is_reported_as_not_resolved():
    with pytest.raises(HostNotResolved) as caught:
        validate_url("http://no-such-host.invalid/x")
    assert caught.value.field == "url"
    assert "no-such-host.invalid could not be resolved" in caught.value.message


def test_only_80_and_443_by_default(settings):
    settings.STENCIL_URL_ALLOWED_PORTS = []
    with pytest.raises(UnsafeUrl, match="port 25 is not allowed; allowed: 80, 443") as refused:
        validate_url("http://198.51.100.3:25/")
    assert refused.value.field == "url"
    with pytest.raises(UnsafeUrl, match="port 8080 is not allowed"):
        validate_url("https://198.51.100.3:8080/")
    assert validate_url("http://198.51.100.3/x").port == 80
    assert validate_url("https://198.51.100.3/x").port == 443
    assert validate_url("http://198.51.100.3:443/x").port == 443


def test_allowed_ports_add_single_ports_and_ranges(settings):
    settings.STENCIL_URL_ALLOWED_PORTS = "8080, 9000-9100"
    assert validate_url("http://198.51.100.3:8080/").port == 8080
    assert validate_url("http://198.51.100.3:9000/").port == 9000
    assert validate_url("http://198.51.100.3:9100/").port == 9100
    assert validate_url("http://198.51.100.3/").port == 80
    with pytest.raises(
        UnsafeUrl, match="port 9101 is not allowed; allowed: 80, 443, 8080, 9000-9100"
    ):
        validate_url("http://198.51.100.3:9101/")


@pytest.mark.parametrize("value", ["http", "9100-9000", "0", "70000", "1-"])
def test_a_bad_allowed_ports_setting_fails_the_system_check(settings, value):
    from templates_app.checks import outbound_url_settings

    settings.STENCIL_URL_ALLOWED_PORTS = [value]
    errors = outbound_url_settings(None)
    assert [e.id for e in errors] == ["stencil.E001"]
    assert "STENCIL_URL_ALLOWED_PORTS" in errors[0].msg


def test_loopback_opt_in(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    assert validate_url("http://127.0.0.1:8000/x").address == "127.0.0.1"
    assert validate_url("http://2130706433/").address == "127.0.0.1"
    assert validate_url("http://[::1]:8000/").address == "::1"
    # Only the loopback rule is lifted: the IPv4-mapped range stays denied.
    with pytest.raises(UnsafeUrl, match="denied network ::ffff:0:0/96"):
        validate_url("http://[::ffff:127.0.0.1]/")
    # Only loopback: metadata and "this host" stay denied.
    with pytest.raises(UnsafeUrl, match="169.254.0.0/16"):
        validate_url("http://169.254.169.254/")
    with pytest.raises(UnsafeUrl, match="0.0.0.0/8"):
        validate_url("http://0.0.0.0:8000/")


def test_narrower_denied_network_applies_despite_loopback_opt_in(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_URL_DENIED_NETWORKS = [*DEFAULT_DENIED_NETWORKS, "127.0.0.2/32"]
    assert validate_url("http://127.0.0.1/").address == "127.0.0.1"
    with pytest.raises(UnsafeUrl, match="127.0.0.2 is in denied network 127.0.0.2/32"):
        validate_url("http://127.0.0.2/")


def test_denied_networks_setting_replaces_the_default(settings):
    settings.STENCIL_URL_DENIED_NETWORKS = ["10.0.0.0/8"]
    with pytest.raises(UnsafeUrl, match="denied network 10.0.0.0/8"):
        validate_url("http://10.1.2.3/")
    assert validate_url("http://127.0.0.1/").address == "127.0.0.1"


def test_settings_default_matches_the_module_default(monkeypatch):
    # project/settings.py cannot import the app, so the list is written twice; keep them equal.
    # The module itself, not django.conf.settings, which the autouse fixture overrides; read
    # again without the variables the test session sets for its own servers' ports.
    for name in (
        "STENCIL_URL_DENIED_NETWORKS",
        "STENCIL_URL_ALLOWED_PORTS",
        "STENCIL_URL_ALLOWED_NETWORKS",
    ):
        monkeypatch.delenv(name, raising=False)
    project_settings = importlib.reload(importlib.import_module("project.settings"))
    denied, ports = (
        project_settings.STENCIL_URL_DENIED_NETWORKS,
        project_settings.STENCIL_URL_ALLOWED_PORTS,
    )
    assert denied == list(DEFAULT_DENIED_NETWORKS)
    assert ports == []
    assert project_settings.STENCIL_URL_ALLOWED_NETWORKS == []


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        ("::ffff:10.0.0.1", ["10.0.0.1"]),
        ("::a00:1", ["10.0.0.1"]),
        ("::1", []),
        ("::", []),
        ("64:ff9b::a9fe:a9fe", ["169.254.169.254"]),
        ("2002:a9fe:a9fe::1", ["169.254.169.254"]),
        # Teredo: the server, and the client (stored inverted in the last 32 bits)
        ("2001:0:a9fe:a9fe::f5ff:fffe", ["169.254.169.254", "10.0.0.1"]),
        ("2001:db8::1", []),
    ],
)
def test_embedded_ipv4_addresses(address, embedded):
    ip = urlsafety.ipaddress.IPv6Address(address)
    assert [str(v4) for v4 in urlsafety.embedded_ipv4(ip)] == embedded


def test_local_nat64_is_read_at_every_rfc6052_prefix_length():
    # 169.254.169.254 after a /48 prefix: octets 1-2 in bits 48-63, bits 64-71 ("u") zero,
    # octets 3-4 in bits 72-87.
    ip = urlsafety.ipaddress.IPv6Address("64:ff9b:1:a9fe:a9:fe00::")
    assert "169.254.169.254" in [str(v4) for v4 in urlsafety.embedded_ipv4(ip)]
    ip = urlsafety.ipaddress.IPv6Address("64:ff9b:1::a9fe:a9fe")  # /96
    assert "169.254.169.254" in [str(v4) for v4 in urlsafety.embedded_ipv4(ip)]


@pytest.mark.parametrize(
    ("allowed", "url", "rule"),
    [
        ("64:ff9b::/96", "http://[64:ff9b::a9fe:a9fe]/", "(169.254.169.254) is in denied network"),
        ("64:ff9b::/96", "http://[64:ff9b::a00:1]/", "(10.0.0.1) is in denied network 10.0.0.0/8"),
        ("2002::/16", "http://[2002:7f00:1::1]/", "(127.0.0.1) is in denied network"),
        ("64:ff9b:1::/48", "http://[64:ff9b:1:a9fe:a9:fe00::]/", "(169.254.169.254)"),
    ],
)
def test_allowing_a_transition_range_still_checks_what_it_embeds(settings, allowed, url, rule):
    settings.STENCIL_URL_ALLOWED_NETWORKS = [allowed]
    with pytest.raises(UnsafeUrl, match=re.escape(rule)):
        validate_url(url)


def test_allowing_a_transition_range_lets_public_embedded_addresses_through(settings):
    settings.STENCIL_URL_ALLOWED_NETWORKS = ["64:ff9b::/96"]
    assert validate_url("http://[64:ff9b::c633:6403]/").address == "64:ff9b::c633:6403"
