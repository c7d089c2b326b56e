"""A host's trust store for HTTPS direct downloads (agent side of the certificates API).

A host's trust directory (`trust_dir_for`) is what the HTTPS downloader gets as `ca_dir`
(`ca_dir_for`): one `<alias>.pem` per certificate plus OpenSSL's hashed links
(`<subject hash>.<n>` → `<alias>.pem`, as `c_rehash` makes them), because OpenSSL looks up a
CA folder by those names only. The hash comes from `openssl x509 -hash` on the host itself, so
it always matches the OpenSSL that reads the folder.

The agent writes files while it holds the host certificate row's lock, so a revoke that lands
meanwhile waits and then queues the removal of what was written.
"""

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction

from templates_app.events import record_event

from ..models import DirectDownloadCertificate, Host, HostCertificate, HostCertificateState
from .failures import describe

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

_HASH_LINK = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")
OPENSSL_TIMEOUT_SECONDS = 10


# Agent side: one host's trust directory --------------------------------------------------------


def record_host_certificate_change(
    row: HostCertificate, before: str, *, actor=None, reason: str
) -> None:
    if before != row.state:
        record_event(
            row,
            from_state=before,
            to_state=row.state,
            actor=actor,
            actor_label="agent",
            reason=reason,
        )


class TrustStoreError(Exception):
    """The trust directory could not be brought to the wanted state."""


def trust_dir_for(host_name: str) -> Path:
    """`STENCIL_AGENT_TRUST_ROOT/<host name>`: the folder of PEMs this host's downloads trust."""
    if not host_name or host_name in (".", "..") or "/" in host_name or "\x00" in host_name:
        raise ValueError(f"host name {host_name!r} cannot name a folder")
    return Path(settings.STENCIL_AGENT_TRUST_ROOT) / host_name


def ca_dir_for(host_name: str) -> str | None:
    """The `ca_dir` to give the HTTPS downloader on this host; None while it has no folder."""
    folder = trust_dir_for(host_name)
    return str(folder) if folder.is_dir() else None


def certificate_install_on_host(*, host_name: str, certificate_id: int) -> HostCertificate | None:
    """Write `<alias>.pem` (atomically, mode 0644) and its hash link; INSTALLED or FAILED.

    Does nothing (returns the row, if any) for a revoked certificate or one of another zone.
    Repeating it rewrites nothing that is already right.
    """
    host = Host.objects.get(name=host_name)
    cert = DirectDownloadCertificate.objects.get(pk=certificate_id)
    if not _wanted_on(cert, host):
        return HostCertificate.objects.filter(certificate=cert, host=host).first()
    HostCertificate.objects.get_or_create(certificate=cert, host=host)
    with transaction.atomic():
        row = HostCertificate.objects.select_for_update().get(certificate=cert, host=host)
        cert.refresh_from_db(fields=["revoked_at"])  # after the lock: a revoke may have landed
        if not _wanted_on(cert, host):
            return row
        before = row.state
        try:
            _write_certificate(trust_dir_for(host.name), cert)
        except Exception as exc:  # nothing stays PENDING: any failure is FAILED, with its text
            row.mark_failed()
            row.error_text = f"install {cert.file_name}: {_reason(exc)}"[:4000]
        else:
            row.mark_installed()
            row.error_text = ""
        row.save()
        record_host_certificate_change(row, before, reason=row.error_text or "installed")
    return row


def certificate_remove_on_host(*, host_name: str, certificate_id: int) -> HostCertificate | None:
    """Delete the certificate's file (only if it still holds this certificate) and its hash
    link; REMOVED. A failure keeps the row REMOVING with the error, for the next sync.

    Does nothing for a certificate this host should have (not revoked, of its zone).
    """
    host = Host.objects.get(name=host_name)
    with transaction.atomic():
        row = (
            HostCertificate.objects.select_for_update(of=("self",))
            .select_related("certificate")
            .filter(certificate_id=certificate_id, host=host)
            .first()
        )
        if row is None or row.state == HostCertificateState.REMOVED:
            return row
        cert = row.certificate
        if _wanted_on(cert, host):
            return row
        before = row.state
        if row.state != HostCertificateState.REMOVING:
            row.start_removal()
        try:
            _delete_certificate(trust_dir_for(host.name), cert)
        except Exception as exc:
            row.error_text = f"remove {cert.file_name}: {_reason(exc)}"[:4000]
        else:
            row.mark_removed()
            row.error_text = ""
        row.save()
        record_host_certificate_change(row, before, reason=row.error_text or "removed")
    return row


def _reason(exc: Exception) -> str:
    if isinstance(exc, (OSError, TrustStoreError)):
        return str(exc)
    logger.exception("trust store: unexpected failure")
    return describe(exc)


def certificates_sync_host(*, host_name: str) -> dict[str, int]:
    """Bring this host's trust directory in line with its zone (agent start, each heartbeat):
    remove revoked (or other zones') certificates still there, then install the missing ones.

    Removals go first: a new certificate may reuse a revoked one's alias, hence its file name.
    Returns how many were installed, removed and failed; nothing is written when all is right.
    """
    host = Host.objects.get(name=host_name)
    folder = trust_dir_for(host.name)
    counts = {"installed": 0, "removed": 0, "failed": 0}
    rows = list(
        HostCertificate.objects.filter(host=host)
        .exclude(state=HostCertificateState.REMOVED)
        .select_related("certificate")
    )
    for row in rows:
        if not _wanted_on(row.certificate, host):
            done = certificate_remove_on_host(
                host_name=host.name, certificate_id=row.certificate_id
            )
            counts["removed" if _state(done) == HostCertificateState.REMOVED else "failed"] += 1
    installed = {row.certificate_id for row in rows if row.state == HostCertificateState.INSTALLED}
    linked = _linked_files(folder)
    wanted = DirectDownloadCertificate.objects.filter(zone_id=host.zone_id, revoked_at__isnull=True)
    for cert in wanted.order_by("pk"):
        if cert.pk in installed and _holds(folder, cert, linked):
            continue
        done = certificate_install_on_host(host_name=host.name, certificate_id=cert.pk)
        state = _state(done)
        if state == HostCertificateState.INSTALLED:
            counts["installed"] += 1
        elif state == HostCertificateState.FAILED:
            counts["failed"] += 1
    if any(counts.values()):
        logger.info("certificates of host %s synced: %s", host.name, counts)
    return counts


def _wanted_on(cert: DirectDownloadCertificate, host: Host) -> bool:
    return cert.revoked_at is None and cert.zone_id == host.zone_id


def _state(row: HostCertificate | None) -> str:
    return row.state if row is not None else ""


def _holds(folder: Path, cert: DirectDownloadCertificate, linked: set[str]) -> bool:
    """The folder has this certificate's file, with these bytes, and a hash link to it."""
    if cert.file_name not in linked:
        return False
    try:
        return (folder / cert.file_name).read_bytes() == cert.pem.encode("ascii")
    except OSError:
        return False


# Files: written under a per-folder lock (the agent's worker runs tasks in threads) -------------


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_certificate(folder: Path, cert: DirectDownloadCertificate) -> None:
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    data = cert.pem.encode("ascii")
    target = folder / cert.file_name
    with _folder_lock(folder):
        try:
            same = target.read_bytes() == data
        except FileNotFoundError:
            same = False
        if not same:
            _write_atomically(target, data)
        # A file rewritten with another certificate (a reused alias) may hash differently.
        _relink(folder, rehash=set() if same else {cert.file_name})


def _delete_certificate(folder: Path, cert: DirectDownloadCertificate) -> None:
    if not folder.is_dir():
        return
    target = folder / cert.file_name
    with _folder_lock(folder):
        try:
            # The file may already hold a newer certificate that reused the alias: keep that.
            if target.read_bytes() == cert.pem.encode("ascii"):
                target.unlink()
        except FileNotFoundError:
            pass
        _relink(folder, rehash=set())


def _write_atomically(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse a directory fsync: harmless
    finally:
        os.close(fd)


def _hash_links(folder: Path) -> dict[str, str]:
    """{link name: target file name} of the `<8 hex>.<n>` symlinks in the folder."""
    links = {}
    for entry in os.scandir(folder):
        if _HASH_LINK.match(entry.name) and entry.is_symlink():
            links[entry.name] = os.readlink(entry.path)
    return links


def _linked_files(folder: Path) -> set[str]:
    try:
        return set(_hash_links(folder).values())
    except FileNotFoundError:
        return set()


def _relink(folder: Path, *, rehash: set[str]) -> None:
    """Make the hash links exactly match the `.pem` files, as `c_rehash` would.

    Certificates with the same subject hash get `.0`, `.1`, … in file-name order (OpenSSL stops
    at the first missing number, so the numbering has no gaps). A file's hash is read back from
    its current link unless it is listed in `rehash`, so a steady folder runs no openssl.
    """
    links = _hash_links(folder)
    known = {target: name.partition(".")[0] for name, target in links.items()}
    pems = sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.name.endswith(".pem") and not entry.name.startswith(".") and entry.is_file()
    )
    by_hash: dict[str, list[str]] = {}
    for pem in pems:
        subject_hash = known.get(pem) if pem not in rehash else None
        try:
            subject_hash = subject_hash or _subject_hash(folder / pem)
        except TrustStoreError:
            if pem in rehash:
                raise
            # A stray file nobody can read must not block the certificates that are fine.
            logger.warning("trust directory %s: %s has no readable certificate", folder, pem)
            continue
        by_hash.setdefault(subject_hash, []).append(pem)
    wanted = {
        f"{subject_hash}.{index}": pem
        for subject_hash, names in by_hash.items()
        for index, pem in enumerate(names)
    }
    for name, target in links.items():
        if wanted.get(name) != target:
            (folder / name).unlink(missing_ok=True)
    for name, target in wanted.items():
        if links.get(name) != target:
            tmp = folder / f".{name}.link"
            tmp.unlink(missing_ok=True)
            os.symlink(target, tmp)
            os.replace(tmp, folder / name)


def _subject_hash(path: Path) -> str:
    """OpenSSL's subject hash of a PEM file (the name it looks the CA up by)."""
    try:
        done = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(path)],
            capture_output=True,
            text=True,
            timeout=OPENSSL_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrustStoreError(f"openssl x509 -hash: {exc}") from None
    value = done.stdout.strip()
    if done.returncode != 0 or not re.fullmatch(r"[0-9a-f]{8}", value):
        raise TrustStoreError(f"openssl x509 -hash on {path.name}: {done.stderr.strip()[:300]}")
    return value


@transaction.atomic
def host_certificate_failed(*, host_name: str, certificate_id: int, reason: str) -> None:
    """A certificate task failed outside its own handling: an install ends FAILED (the next
    sync retries it), a removal stays REMOVING; both with the reason."""
    row = (
        HostCertificate.objects.select_for_update()
        .filter(certificate_id=certificate_id, host__name=host_name)
        .first()
    )
    if row is None:
        return
    before = row.state
    if row.state not in (HostCertificateState.REMOVING, HostCertificateState.REMOVED):
        row.mark_failed()
    row.error_text = reason[:4000]
    row.save()
    record_host_certificate_change(row, before, reason=row.error_text)
