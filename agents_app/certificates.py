"""Direct-download certificates (CloudStack's upload/revokeTemplateDirectDownloadCertificate).

Management side: `certificate_upload` parses and checks a PEM certificate, stores it and, after
commit, asks every Up host of its zone to install it; `certificate_revoke` asks every host that
has it to remove it. Agent side (run by the host's own worker, `host.<name>`): install, remove
and sync one host's trust directory.

A host's trust directory (`trust_dir_for`) is what the HTTPS downloader gets as `ca_dir`
(`ca_dir_for`): one `<alias>.pem` per certificate plus OpenSSL's hashed links
(`<subject hash>.<n>` → `<alias>.pem`, as `c_rehash` makes them), because OpenSSL looks up a
CA folder by those names only. The hash comes from `openssl x509 -hash` on the host itself, so
it always matches the OpenSSL that reads the folder.

Lock order: certificate → host certificate row. The agent writes files while it holds the row's
lock, so a revoke that lands meanwhile waits and then queues the removal of what was written.
"""

import logging
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from templates_app.errors import InvalidInput
from templates_app.events import record_event
from templates_app.models import Zone

from .agent.trust import record_host_certificate_change
from .choices import HostState
from .models import DirectDownloadCertificate, Host, HostCertificate, HostCertificateState

if TYPE_CHECKING:
    from cryptography import x509

logger = logging.getLogger(__name__)

MAX_PEM_CHARS = 64 * 1024  # a certificate is a few KiB; this only bounds the parser's work
ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The seed's keystore keeps CloudStack's own entries under these names; ours keep them free too.
RESERVED_ALIAS_PREFIXES = ("stencil", "cloud")
RESERVED_ALIASES = frozenset({"ca", "root"})
_PEM_LABEL = re.compile(r"-----BEGIN ([^-\r\n]*)-----")
_HASH_LINK = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")
OPENSSL_TIMEOUT_SECONDS = 10


# Checking what an operator sends -------------------------------------------------------------


@dataclass(frozen=True)
class ParsedCertificate:
    """What is stored of a certificate: the certificate alone, re-encoded, and its fields."""

    pem: str
    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str


def alias_check(alias: str) -> str:
    """The alias names a file on every host: a plain name, and not one of the reserved ones."""
    alias = alias or ""
    if not ALIAS_PATTERN.match(alias):
        raise InvalidInput(
            "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a digit",
            field="alias",
        )
    lowered = alias.lower()
    if lowered in RESERVED_ALIASES or lowered.startswith(RESERVED_ALIAS_PREFIXES):
        raise InvalidInput(
            f"alias '{alias}' is reserved (names starting with "
            f"{' or '.join(RESERVED_ALIAS_PREFIXES)}, and {', '.join(sorted(RESERVED_ALIASES))})",
            field="alias",
        )
    return alias


def certificate_parse(text: str, *, now: datetime | None = None) -> ParsedCertificate:
    """Exactly one PEM certificate, valid now, and nothing else (above all no private key).

    Messages never quote the input: it may hold a key that was sent by mistake.
    """
    text = text or ""
    if len(text) > MAX_PEM_CHARS:
        raise _bad_certificate(f"more than {MAX_PEM_CHARS} characters")
    # Refuse the whole input, whatever else it holds: key material is never parsed or stored.
    if "PRIVATE KEY" in text.upper():
        raise _bad_certificate("contains a private key; send the certificate alone")
    labels = _PEM_LABEL.findall(text)
    if not labels:
        raise _bad_certificate("not a PEM certificate (no -----BEGIN CERTIFICATE----- block)")
    others = sorted({label for label in labels if label != "CERTIFICATE"})
    if others:
        raise _bad_certificate(f"only a CERTIFICATE block is accepted, not {', '.join(others)}")
    if len(labels) > 1:
        raise _bad_certificate(f"{len(labels)} certificates; send one per alias")
    # Imported here: agents only read trust folders; cryptography costs ~14 MB per worker.
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(text.encode("utf-8"))
        return _fields_of(cert, now or timezone.now())
    except ValueError as exc:
        raise _bad_certificate(f"not a valid X.509 certificate ({_first_line(exc)})") from None


def _fields_of(cert: "x509.Certificate", now: datetime) -> ParsedCertificate:
    from cryptography.hazmat.primitives import hashes, serialization

    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not_after < now:
        raise _bad_certificate(f"expired on {not_after.isoformat()}")
    if not_before > now:
        raise _bad_certificate(f"not valid before {not_before.isoformat()}")
    serial = format(cert.serial_number, "x")
    if len(serial) > 64:
        raise _bad_certificate("serial number longer than 32 octets")
    return ParsedCertificate(
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        subject=cert.subject.rfc4514_string()[:1024],
        issuer=cert.issuer.rfc4514_string()[:1024],
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def _bad_certificate(reason: str) -> InvalidInput:
    return InvalidInput(f"{reason}; nothing was stored", field="certificate")


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


# Reads ---------------------------------------------------------------------------------------


def certificates_list() -> QuerySet[DirectDownloadCertificate]:
    """Every certificate with its zone and per-host status (two queries whatever the count)."""
    rows = HostCertificate.objects.select_related("host").order_by("host__name")
    return DirectDownloadCertificate.objects.select_related("zone").prefetch_related(
        Prefetch("host_certificates", queryset=rows)
    )


# Management-side services ----------------------------------------------------------------------


@transaction.atomic
def certificate_upload(*, alias: str, pem: str, zone: Zone, actor) -> DirectDownloadCertificate:
    """Store a certificate for a zone and, after commit, install it on every Up host of it.

    Any refusal (400 naming `alias` or `certificate`) stores nothing and queues nothing. Hosts
    that are not Up now get it from their agent's sync when they come Up.
    """
    alias = alias_check(alias)
    parsed = certificate_parse(pem)
    live = DirectDownloadCertificate.objects.filter(zone=zone, revoked_at__isnull=True)
    if live.filter(alias=alias).exists():
        raise _duplicate_alias(alias, zone)
    try:
        with transaction.atomic():  # a concurrent upload of the same alias loses here
            cert = DirectDownloadCertificate.objects.create(
                alias=alias, zone=zone, **asdict(parsed)
            )
    except IntegrityError:
        raise _duplicate_alias(alias, zone) from None
    record_event(cert, from_state="", to_state="ACTIVE", actor=actor, reason="uploaded")
    hosts = list(Host.objects.filter(zone=zone, state=HostState.UP).order_by("name"))
    HostCertificate.objects.bulk_create([HostCertificate(certificate=cert, host=h) for h in hosts])
    for host in hosts:
        certificate_task_enqueue("install", host, cert)
    return cert


def _duplicate_alias(alias: str, zone: Zone) -> InvalidInput:
    return InvalidInput(f"zone '{zone}' already has a certificate named '{alias}'", field="alias")


@transaction.atomic
def certificate_revoke(*, certificate_id: int, actor) -> DirectDownloadCertificate:
    """Revoke: every host that has it (in any state but REMOVED) removes it after commit.

    A repeat is a no-op. The alias becomes free for a new certificate.
    """
    cert = DirectDownloadCertificate.objects.select_for_update().get(pk=certificate_id)
    if cert.revoked_at is not None:
        return cert
    cert.revoked_at = timezone.now()
    cert.save(update_fields=["revoked_at"])
    record_event(cert, from_state="ACTIVE", to_state="REVOKED", actor=actor, reason="revoked")
    rows = (
        HostCertificate.objects.select_for_update(of=("self",))
        .select_related("host")
        .filter(certificate=cert)
        .exclude(state=HostCertificateState.REMOVED)
        .order_by("pk")
    )
    for row in rows:
        before = row.state
        row.start_removal()
        row.error_text = ""
        row.save(update_fields=["state", "error_text", "updated_at"])
        record_host_certificate_change(row, before, actor=actor, reason="revoked")
        certificate_task_enqueue("remove", row.host, cert)
    return cert


def certificate_task_enqueue(action: str, host: Host, cert: DirectDownloadCertificate) -> None:
    from .agent.tasks import certificate_install_task, certificate_remove_task

    task = certificate_install_task if action == "install" else certificate_remove_task
    queue, kwargs = host.queue, {"host_name": host.name, "certificate_id": cert.pk}
    transaction.on_commit(lambda: task.apply_async(kwargs=kwargs, queue=queue))
