"""One validator for every outbound URL: the first request, every redirect, every mirror.

The storage worker and the KVM agents fetch URLs that tenants type in. Without a check, a tenant
could make them fetch `http://169.254.169.254/` (cloud metadata, credentials) or a service bound
to loopback. `validate_url` refuses such targets and resolves the host name ONCE; the caller then
connects to exactly the address that was checked, so a DNS answer that changes between the check
and the connection (DNS rebinding) cannot reach a denied network.

Deny by default. Settings, read at call time (defaults in project/settings.py, "Outbound URLs"):

- `STENCIL_URL_DENIED_NETWORKS`: CIDR networks never connected to (default
  `DEFAULT_DENIED_NETWORKS`: loopback, link-local and metadata, "this network", broadcast,
  multicast, the private ranges, and the IPv6 ranges that carry an IPv4 address).
- `STENCIL_URL_ALLOWED_NETWORKS`: CIDR networks an operator lets through although a wider
  denied network holds them (an internal mirror in 10.1.0.0/16). A narrower denied network
  still wins: allowing 100.64.0.0/10 does not allow the 100.100.100.200 metadata address.
- `STENCIL_URL_ALLOWED_PORTS`: ports allowed besides 80 and 443 ("8080,9000-9100").
- `STENCIL_URL_ALLOW_LOOPBACK`: allow 127.0.0.0/8 and ::1 (tests, single-host setups).

An IPv6 address that embeds an IPv4 address (IPv4-mapped and -compatible, NAT64, 6to4, Teredo)
is checked as itself AND as every IPv4 address it carries: allowing 64:ff9b::/96 for a NAT64
gateway does not open 64:ff9b::a9fe:a9fe (169.254.169.254).
"""

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ..errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Always allowed; STENCIL_URL_ALLOWED_PORTS adds to them.
BASE_PORTS = frozenset(DEFAULT_PORTS.values())

# Kept equal to the default in project/settings.py (a test checks it); used when Django settings
# do not define the name, e.g. a settings module of a tool that imports this library.
DEFAULT_DENIED_NETWORKS: tuple[str, ...] = (
    "127.0.0.0/8",  # loopback
    "::1/128",
    "169.254.0.0/16",  # link-local, includes the 169.254.169.254 metadata service
    "fe80::/10",
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches local services on Linux
    "255.255.255.255/32",  # limited broadcast
    "224.0.0.0/4",  # multicast
    "ff00::/8",
    "100.100.100.200/32",  # Alibaba Cloud metadata; stays denied when 100.64/10 is allowed
    "fd00:ec2::254/128",  # AWS metadata over IPv6; stays denied when fc00::/7 is allowed
    # Private ranges: the cloud's own networks. STENCIL_URL_ALLOWED_NETWORKS opens a mirror's.
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # carrier-grade NAT, often the provider's internal network
    "fc00::/7",  # unique local
    # IPv6 ranges that carry an IPv4 address: the embedded address is checked as well.
    "::/96",  # IPv4-compatible (deprecated); includes :: (unspecified)
    "::ffff:0:0/96",  # IPv4-mapped
    "64:ff9b::/96",  # NAT64, well-known prefix
    "64:ff9b:1::/48",  # NAT64, local use
    "2002::/16",  # 6to4
    "2001::/32",  # Teredo
)
# Where the IPv4 address sits in the ranges that carry one (RFC 4291, 6052, 8215, 3056, 4380).
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_NAT64_LOCAL_PREFIX_LENGTHS = (48, 56, 64, 96)  # RFC 6052 prefixes inside 64:ff9b:1::/48
_LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

# What may appear in a host name once IDNA-encoded. Anything else (spaces, '%', '\') is refused
# rather than passed on to the resolver or into a Host header.
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_.])?$")
# Characters of the legacy numeric IPv4 forms inet_aton accepts: 0x7f000001, 0177.1, 2130706433.
_NUMERIC_HOST = re.compile(r"^[0-9a-fx.]+$")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


class UnsafeUrl(InvalidInput):
    """A URL that outbound requests must not follow; the message names the rule it breaks."""

    code = "unsafe_url"

    def __init__(self, message: str, *, field: str | None = "url"):
        super().__init__(message, field=field)


class HostNotResolved(UnsafeUrl):
    """The host name has no address. `temporary` is True when DNS may answer later."""

    code = "host_not_resolved"

    def __init__(self, message: str, *, temporary: bool):
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class ResolvedTarget:
    """A checked URL and the one address to connect to.

    `host` is the host name as written (lowercased, IDNA-encoded, IPv6 without brackets): it goes
    in the Host header and in TLS server_hostname. `address` is the IP that was checked: connect
    there and nowhere else.
    """

    url: str
    scheme: str
    host: str
    port: int
    address: str
    request_target: str

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port): what decides whether credentials may follow a redirect."""
        return (self.scheme, self.host, self.port)


def validate_url(url: str) -> ResolvedTarget:
    """Check `url` against the outbound rules and resolve its host once.

    Raises UnsafeUrl (field "url") naming the rule: scheme other than http/https, user:password@,
    missing or malformed host, denied port, or any resolved address inside a denied network.
    A name whose DNS answer holds one denied address is refused even if others are fine.
    """
    if not isinstance(url, str) or not url:
        raise UnsafeUrl("URL is required")
    if _CONTROL_OR_SPACE.search(url):
        raise UnsafeUrl("URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"malformed URL: {exc}") from None

    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = scheme or "(none)"
        raise UnsafeUrl(f"unsupported URL scheme '{shown}'; allowed: {', '.join(ALLOWED_SCHEMES)}")
    # Credentials in URLs end up in logs and events, and 'http://good.example@evil' misleads
    # whoever reads it. Any '@' in the authority is refused, whatever urlsplit made of it.
    if "@" in parts.netloc:
        raise UnsafeUrl("URL must not contain credentials (user:password@host)")
    if not parts.hostname:
        raise UnsafeUrl("URL has no host")
    if explicit_port == 0:
        raise UnsafeUrl("port 0 is not allowed")
    port = explicit_port or DEFAULT_PORTS[scheme]
    _check_port(port)

    bracketed = parts.netloc.startswith("[")
    host, literal = _normalise_host(parts.hostname, bracketed=bracketed)
    if literal is not None:
        checked = _check_address(literal, host)
        address = str(checked)
    else:
        address = _resolve_and_check(host, port)

    request_target = _request_target(parts)
    netloc = f"[{host}]" if ":" in host else host
    if explicit_port is not None:
        netloc = f"{netloc}:{explicit_port}"
    return ResolvedTarget(
        url=f"{scheme}://{netloc}{request_target}",
        scheme=scheme,
        host=host,
        port=port,
        address=address,
        request_target=request_target,
    )


def _normalise_host(hostname: str, *, bracketed: bool) -> tuple[str, IPAddress | None]:
    """Return (host as written, IDNA; IP literal or None). Numeric spellings become an IP."""
    if bracketed:
        if "%" in hostname:
            raise UnsafeUrl("IPv6 zone identifiers are not allowed in URLs")
        try:
            return hostname, ipaddress.IPv6Address(hostname)
        except ValueError:
            raise UnsafeUrl(f"invalid IPv6 address [{hostname}]") from None
    try:
        # Python's idna codec is IDNA 2003; enough to turn a Unicode name into its A-label form.
        host = hostname.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UnsafeUrl(f"invalid host name '{hostname}'") from None
    if not _HOST_NAME.match(host) or ".." in host:
        raise UnsafeUrl(f"invalid host name '{hostname}'")
    # The resolver (glibc) reads 2130706433, 0x7f000001, 0177.0.0.1 and 127.1 as 127.0.0.1, as
    # inet_aton does. Parse them the same way so the check sees the address that would be used.
    candidate = host[:-1] if host.endswith(".") else host
    if _NUMERIC_HOST.match(candidate):
        try:
            return host, ipaddress.IPv4Address(socket.inet_aton(candidate))
        except OSError:
            pass
    return host, None


def _resolve_and_check(host: str, port: int) -> str:
    """Resolve `host` once; every address must pass. Return the first one."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        temporary = exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None))
        raise HostNotResolved(
            f"host {host} could not be resolved: {exc.strerror}", temporary=temporary
        ) from None
    except UnicodeError:
        raise UnsafeUrl(f"invalid host name '{host}'") from None
    addresses: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # A link-local IPv6 answer may carry a scope ('fe80::1%eth0'); the check needs the IP.
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        addresses.append(str(_check_address(ip, host)))
    if not addresses:
        raise HostNotResolved(f"host {host} has no IPv4 or IPv6 address", temporary=False)
    return addresses[0]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries: mapped, compatible, NAT64, 6to4, Teredo.

    Where an address could be read several ways (a local NAT64 prefix of unknown length, both
    ends of a Teredo address), every reading is returned: checking one too many only refuses.
    """
    value = int(ip)
    found: list[int] = []
    if ip.ipv4_mapped is not None:
        found.append(int(ip.ipv4_mapped))
    if ip in _IPV4_COMPATIBLE and value > 1:  # :: and ::1 are not IPv4 addresses
        found.append(value & 0xFFFFFFFF)
    if ip in _NAT64_WELL_KNOWN:
        found.append(value & 0xFFFFFFFF)
    if ip in _NAT64_LOCAL:
        found.extend(_rfc6052_ipv4(value, length) for length in _NAT64_LOCAL_PREFIX_LENGTHS)
    if ip.sixtofour is not None:
        found.append(int(ip.sixtofour))
    if ip.teredo is not None:
        found.extend(int(end) for end in ip.teredo)  # (server, client)
    return [ipaddress.IPv4Address(v) for v in dict.fromkeys(found)]


def _rfc6052_ipv4(value: int, prefix_length: int) -> int:
    """The IPv4 address after an RFC 6052 prefix of this length (bits 64-71, "u", skipped)."""
    if prefix_length == 96:
        return value & 0xFFFFFFFF
    without_u = ((value >> 64) << 56) | (value & ((1 << 56) - 1))  # 120 bits
    return (without_u >> (120 - prefix_length - 32)) & 0xFFFFFFFF


def _check_address(ip: IPAddress, host: str) -> IPAddress:
    """Refuse `ip` if a denied network holds it or any IPv4 address it embeds; return the
    address to connect to.

    An IPv4-mapped IPv6 address (::ffff:10.0.0.1) reaches the IPv4 host, so when it is allowed
    at all (its range is denied by default) it is connected to as that IPv4 address.
    """
    forms: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        forms.extend(embedded_ipv4(ip))
        if ip.ipv4_mapped is not None:
            forms.insert(0, forms.pop(forms.index(ip.ipv4_mapped)))
    allow_loopback = bool(_setting("STENCIL_URL_ALLOW_LOOPBACK", False))
    allowed = _allowed_networks()
    for form in forms:
        for network in _denied_networks():
            if form.version != network.version or form not in network:
                continue
            # The opt-in lifts the loopback rule itself (or any wider one), not a narrower rule
            # an operator added on purpose, such as 127.0.0.2/32.
            if allow_loopback and form.is_loopback and _covers_loopback(network):
                continue
            # Likewise an allowed network lifts the denied networks that contain it, never a
            # narrower one (allowing 100.64.0.0/10 keeps 100.100.100.200/32 denied).
            if any(_lifts(allow, network, form) for allow in allowed):
                continue
            shown = f"{host} ({form})" if host != str(form) else host
            raise UnsafeUrl(f"URL host {shown} is in denied network {network}")
    return forms[0]


def _lifts(allow: IPNetwork, denied: IPNetwork, form: IPAddress) -> bool:
    return (
        allow.version == denied.version and form in allow and allow.subnet_of(denied)  # type: ignore[arg-type]
    )


def _covers_loopback(network: IPNetwork) -> bool:
    return any(
        network.version == loop.version and network.supernet_of(loop)  # type: ignore[arg-type]
        for loop in _LOOPBACK_NETWORKS
    )


def _check_port(port: int) -> None:
    extra = _allowed_ports()
    if port in BASE_PORTS or any(first <= port <= last for first, last in extra):
        return
    shown = ", ".join(
        [str(p) for p in sorted(BASE_PORTS)]
        + [str(first) if first == last else f"{first}-{last}" for first, last in extra]
    )
    raise UnsafeUrl(f"port {port} is not allowed; allowed: {shown} (STENCIL_URL_ALLOWED_PORTS)")


def _request_target(parts: SplitResult) -> str:
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    # http.client sends the request line as ASCII: percent-encode what is not (UTF-8), and
    # leave everything else, including existing %XX escapes, exactly as written.
    return "".join(c if ord(c) < 128 else quote(c, safe="") for c in target)


def _setting(name: str, default: object) -> object:
    try:
        return getattr(settings, name, default)
    except ImproperlyConfigured:
        # Used without Django settings (a bare script): the safe defaults apply.
        return default


def _denied_networks() -> tuple[IPNetwork, ...]:
    return _networks_setting("STENCIL_URL_DENIED_NETWORKS", DEFAULT_DENIED_NETWORKS)


def _allowed_networks() -> tuple[IPNetwork, ...]:
    return _networks_setting("STENCIL_URL_ALLOWED_NETWORKS", ())


def _networks_setting(name: str, default: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    value = _setting(name, default)
    if isinstance(value, str):
        value = value.split(",")
    return _parse_networks(name, tuple(str(v).strip() for v in value if str(v).strip()))


@functools.lru_cache(maxsize=16)
def _parse_networks(name: str, values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {exc}") from None
    return tuple(networks)


def _allowed_ports() -> tuple[tuple[int, int], ...]:
    """STENCIL_URL_ALLOWED_PORTS as (first, last) ranges: "8080,9000-9100"."""
    value = _setting("STENCIL_URL_ALLOWED_PORTS", ())
    if isinstance(value, str | int):
        value = str(value).split(",")
    return parse_port_ranges(tuple(str(v).strip() for v in value if str(v).strip()))


@functools.lru_cache(maxsize=16)
def parse_port_ranges(values: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """("8080", "9000-9100") -> ((8080, 8080), (9000, 9100)); ImproperlyConfigured if bad."""
    ranges = []
    for value in values:
        first, dash, last = value.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ImproperlyConfigured(
                f"STENCIL_URL_ALLOWED_PORTS: '{value}' is not a port or a range like 9000-9100"
            ) from None
        if not 1 <= low <= high <= 65535:
            raise ImproperlyConfigured(
                f"STENCIL_URL_ALLOWED_PORTS: '{value}' is not within 1-65535 (low-high)"
            )
        ranges.append((low, high))
    return tuple(ranges)
