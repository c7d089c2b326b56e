"""Direct-download certificates: upload checks, install on hosts, sync, revoke, and the point of
it all, an HTTPS download that a host trusts only once the certificate is installed.

Certificates are real (trustme CAs, cryptography for the expired and odd ones); hosts come from
host_register; tasks are recorded after commit and then run as the host's worker would run them;
files land in a real trust directory under tmp_path; the HTTPS server is real, on 127.0.0.1.
"""

import os
import ssl
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pytest_httpserver import HTTPServer

from agents_app.agent import heartbeat
from agents_app.agent.tasks import certificate_install_task, certificate_remove_task
from agents_app.agent.trust import (
    ca_dir_for,
    certificate_install_on_host,
    certificate_remove_on_host,
    certificates_sync_host,
    trust_dir_for,
)
from agents_app.certificates import certificate_revoke, certificate_upload
from agents_app.host_services import hosts_mark_down
from agents_app.management.commands import run_agent
from agents_app.models import DirectDownloadCertificate, Host, HostCertificate
from templates_app.errors import StencilError
from templates_app.images.downloader import DownloadError, download_to_file
from templates_app.images.urlsafety import DEFAULT_DENIED_NETWORKS
from templates_app.models import Event
from tests.templates_app.factories import ZoneFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/direct-download-certificates/"
NO_RETRY = {"max_attempts": 1, "connect_timeout": 2, "read_timeout": 2}


# Certificates ------------------------------------------------------------------------------


def ca_pem(ca: trustme.CA | None = None) -> str:
    return (ca or trustme.CA()).cert_pem.bytes().decode()


def self_signed_pem(*, cn: str = "odd.example", valid_from=None, valid_until=None) -> str:
    """A self-signed EC certificate with the given validity (default: valid now, for a day)."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from or now - timedelta(hours=1))
        .not_valid_after(valid_until or now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def public_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def subject_hash(path) -> str:
    done = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def hash_links(folder) -> dict[str, str]:
    return {
        entry.name: os.readlink(entry.path) for entry in os.scandir(folder) if entry.is_symlink()
    }


# Fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def trust_root(settings, tmp_path):
    """Every test's hosts keep their trust directories under tmp_path, never under var/."""
    settings.STENCIL_AGENT_TRUST_ROOT = tmp_path / "trust"
    return settings.STENCIL_AGENT_TRUST_ROOT


def make_host(zone, name: str) -> Host:
    return heartbeat.host_register(name=name, zone=zone, libvirt_uri="test:///default")


def mark_down(host: Host) -> Host:
    Host.objects.filter(pk=host.pk).update(last_heartbeat_at=timezone.now() - timedelta(hours=1))
    hosts_mark_down(missed_after_seconds=90)
    host.refresh_from_db()
    return host


@pytest.fixture
def hosts(zone):
    """Two Up hosts in the zone, one Down host in it, and an Up host of another zone."""
    up = [make_host(zone, "kvm-1"), make_host(zone, "kvm-2")]
    down = mark_down(make_host(zone, "kvm-3"))
    make_host(ZoneFactory(name="zone-b"), "kvm-b")
    return {"up": up, "down": down}


@pytest.fixture
def queued(monkeypatch):
    """Install and remove tasks sent after commit: recorded, not sent to a broker."""
    calls = []

    def recorder(action):
        return lambda **kwargs: calls.append((action, kwargs))

    monkeypatch.setattr(certificate_install_task, "apply_async", recorder("install"), raising=False)
    monkeypatch.setattr(certificate_remove_task, "apply_async", recorder("remove"), raising=False)
    return calls


def run_queued(calls) -> None:
    """Run each recorded task as the worker of its queue would."""
    for action, call in calls:
        kwargs = call["kwargs"]
        assert call["queue"] == f"host.{kwargs['host_name']}"
        run = certificate_install_on_host if action == "install" else certificate_remove_on_host
        run(**kwargs)
    calls.clear()


@pytest.fixture
def upload(admin_api, zone, queued, django_capture_on_commit_callbacks):
    """POST a certificate; the after-commit callbacks run (and record the tasks)."""

    def _upload(pem: str, alias: str = "corp-ca", zone_=None):
        payload = {"alias": alias, "certificate": pem, "zone": str((zone_ or zone).uuid)}
        with django_capture_on_commit_callbacks(execute=True):
            return admin_api.post(URL, payload, format="json")

    return _upload


def revoke(api, cert_id, capture):
    with capture(execute=True):
        return api.post(f"{URL}{cert_id}/revoke/")


def states(cert_uuid) -> dict[str, str]:
    rows = HostCertificate.objects.filter(certificate__uuid=cert_uuid).select_related("host")
    return {row.host.name: row.state for row in rows}


# Refusals: 400 naming the field, nothing stored, nothing queued -----------------------------


def _two_certificates() -> str:
    return ca_pem() + ca_pem()


def _leaf_with_key() -> str:
    return trustme.CA().issue_cert("mirror.example").private_key_and_cert_chain_pem.bytes().decode()


def _key_alone() -> str:
    return trustme.CA().issue_cert("mirror.example").private_key_pem.bytes().decode()


def _expired() -> str:
    now = datetime.now(UTC)
    return self_signed_pem(valid_from=now - timedelta(days=30), valid_until=now - timedelta(days=1))


def _not_yet_valid() -> str:
    now = datetime.now(UTC)
    return self_signed_pem(valid_from=now + timedelta(days=1), valid_until=now + timedelta(days=30))


def _corrupt_block() -> str:
    return "-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("make_pem", "alias", "field", "reason"),
    [
        (lambda: "hello, world", "corp-ca", "certificate", "not a PEM certificate"),
        (lambda: "", "corp-ca", "certificate", "may not be blank"),
        (_corrupt_block, "corp-ca", "certificate", "not a valid X.509 certificate"),
        (public_key_pem, "corp-ca", "certificate", "not PUBLIC KEY"),
        (_leaf_with_key, "corp-ca", "certificate", "private key"),
        (_key_alone, "corp-ca", "certificate", "private key"),
        (_two_certificates, "corp-ca", "certificate", "2 certificates"),
        (_expired, "corp-ca", "certificate", "expired on"),
        (_not_yet_valid, "corp-ca", "certificate", "not valid before"),
        (ca_pem, "stencil-internal", "alias", "reserved"),
        (ca_pem, "Cloud1", "alias", "reserved"),
        (ca_pem, "ca", "alias", "reserved"),
        (ca_pem, "ROOT", "alias", "reserved"),
        (ca_pem, "-corp", "alias", "1 to 64"),
        (ca_pem, "a/b", "alias", "1 to 64"),
        (ca_pem, "..", "alias", "1 to 64"),
        (ca_pem, "x" * 65, "alias", "1 to 64"),
        (ca_pem, "corp ca", "alias", "1 to 64"),
    ],
    ids=[
        "garbage",
        "empty",
        "corrupt-block",
        "public-key",
        "leaf-with-private-key",
        "private-key-alone",
        "two-certificates",
        "expired",
        "not-yet-valid",
        "reserved-stencil",
        "reserved-cloud",
        "reserved-ca",
        "reserved-root",
        "leading-dash",
        "slash",
        "dots",
        "too-long",
        "space",
    ],
)
def test_refusals_name_the_field_and_store_and_queue_nothing(
    admin_api,
    zone,
    hosts,
    trust_root,
    django_capture_on_commit_callbacks,
    make_pem,
    alias,
    field,
    reason,
):
    pem = make_pem()
    payload = {"alias": alias, "certificate": pem, "zone": str(zone.uuid)}
    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_api.post(URL, payload, format="json")

    assert response.status_code == 400, response.content
    body = response.json()
    assert list(k for k in body if k != "code") == [field]
    assert reason in body[field][0]
    assert callbacks == []
    assert not DirectDownloadCertificate.objects.exists()
    assert not HostCertificate.objects.exists()
    assert not trust_root.exists()


def test_a_refused_private_key_is_never_echoed(admin_api, zone, hosts):
    pem = _leaf_with_key()
    key_line = next(line for line in pem.splitlines() if line and "-----" not in line)

    response = admin_api.post(
        URL, {"alias": "corp-ca", "certificate": pem, "zone": str(zone.uuid)}, format="json"
    )

    assert response.status_code == 400
    assert key_line not in response.content.decode()


def test_duplicate_alias_in_the_zone_is_refused(
    upload, admin_api, zone, hosts, queued, django_capture_on_commit_callbacks
):
    assert upload(ca_pem()).status_code == 201
    queued.clear()
    payload = {"alias": "corp-ca", "certificate": ca_pem(), "zone": str(zone.uuid)}

    with django_capture_on_commit_callbacks() as callbacks:
        response = admin_api.post(URL, payload, format="json")

    assert response.status_code == 400
    assert "already has a certificate named 'corp-ca'" in response.json()["alias"][0]
    assert callbacks == []
    assert DirectDownloadCertificate.objects.count() == 1
    assert HostCertificate.objects.count() == 2  # the first upload's, nothing more


def test_the_same_alias_in_another_zone_is_fine(upload, hosts):
    assert upload(ca_pem()).status_code == 201
    assert upload(ca_pem(), zone_=ZoneFactory(name="zone-c")).status_code == 201


def test_unknown_zone_is_400_naming_zone(admin_api):
    payload = {
        "alias": "corp-ca",
        "certificate": ca_pem(),
        "zone": "00000000-0000-0000-0000-000000000000",
    }
    response = admin_api.post(URL, payload, format="json")
    assert response.status_code == 400
    assert "zone" in response.json()
    assert not DirectDownloadCertificate.objects.exists()


def test_only_staff_upload_list_and_revoke(api, admin_api, zone, hosts, upload):
    payload = {"alias": "corp-ca", "certificate": ca_pem(), "zone": str(zone.uuid)}
    assert api.post(URL, payload, format="json").status_code == 403
    assert not DirectDownloadCertificate.objects.exists()

    cert_id = upload(ca_pem()).json()["id"]
    assert api.get(URL).status_code == 403
    assert api.get(f"{URL}{cert_id}/").status_code == 403
    assert api.post(f"{URL}{cert_id}/revoke/").status_code == 403
    assert DirectDownloadCertificate.objects.get(uuid=cert_id).revoked_at is None


# Upload and install -------------------------------------------------------------------------


def test_upload_stores_it_and_queues_one_install_per_up_host(upload, zone, hosts, queued):
    ca = trustme.CA()

    response = upload(ca_pem(ca))

    assert response.status_code == 201, response.content
    body = response.json()
    cert = DirectDownloadCertificate.objects.get(uuid=body["id"])
    parsed = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    assert cert.pem == ca.cert_pem.bytes().decode()
    assert cert.fingerprint_sha256 == parsed.fingerprint(hashes.SHA256()).hex()
    assert cert.serial == format(parsed.serial_number, "x")
    assert cert.subject == parsed.subject.rfc4514_string()
    assert cert.not_after == parsed.not_valid_after_utc
    assert body["zone"] == str(zone.uuid)
    assert [(h["host"], h["state"]) for h in body["hosts"]] == [
        ("kvm-1", "PENDING"),
        ("kvm-2", "PENDING"),
    ]
    # One task per Up host of the zone, on that host's queue; not the Down one, not zone-b's.
    assert sorted((action, call["queue"]) for action, call in queued) == [
        ("install", "host.kvm-1"),
        ("install", "host.kvm-2"),
    ]
    assert all(call["kwargs"]["certificate_id"] == cert.pk for _, call in queued)
    assert Event.objects.filter(object_uuid=cert.uuid, to_state="ACTIVE").exists()


def test_install_writes_the_pem_and_its_hash_link(upload, hosts, queued, trust_root):
    body = upload(ca_pem()).json()

    run_queued(queued)

    assert states(body["id"]) == {"kvm-1": "INSTALLED", "kvm-2": "INSTALLED"}
    for name in ("kvm-1", "kvm-2"):
        folder = trust_root / name
        pem = folder / "corp-ca.pem"
        assert pem.read_text() == body["certificate"]
        assert pem.stat().st_mode & 0o777 == 0o644
        assert hash_links(folder) == {f"{subject_hash(pem)}.0": "corp-ca.pem"}
        assert ca_dir_for(name) == str(folder)
        assert not [
            p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock"
        ]
    assert not (trust_root / "kvm-3").exists()  # Down: it gets it when it comes Up


def test_install_is_idempotent(upload, hosts, queued, trust_root):
    body = upload(ca_pem()).json()
    cert = DirectDownloadCertificate.objects.get(uuid=body["id"])
    run_queued(queued)
    pem = trust_root / "kvm-1" / "corp-ca.pem"
    before = (pem.stat().st_ino, pem.stat().st_mtime_ns)
    events = Event.objects.count()

    row = certificate_install_on_host(host_name="kvm-1", certificate_id=cert.pk)

    assert row.state == "INSTALLED"
    assert (pem.stat().st_ino, pem.stat().st_mtime_ns) == before  # not rewritten
    assert Event.objects.count() == events
    assert certificates_sync_host(host_name="kvm-1") == {"installed": 0, "removed": 0, "failed": 0}


def test_a_host_that_comes_up_later_gets_the_missing_certificates(
    upload, hosts, queued, trust_root, zone
):
    first = upload(ca_pem(), alias="corp-ca").json()
    second = upload(ca_pem(), alias="lab-ca").json()
    queued.clear()  # kvm-1 and kvm-2 would install them; kvm-3 was Down
    assert ca_dir_for("kvm-3") is None

    make_host(zone, "kvm-3")  # its agent starts again: registered Up, then syncs
    counts = certificates_sync_host(host_name="kvm-3")

    assert counts == {"installed": 2, "removed": 0, "failed": 0}
    assert states(first["id"])["kvm-3"] == states(second["id"])["kvm-3"] == "INSTALLED"
    assert sorted(p.name for p in (trust_root / "kvm-3").glob("*.pem")) == [
        "corp-ca.pem",
        "lab-ca.pem",
    ]
    assert certificates_sync_host(host_name="kvm-3") == {"installed": 0, "removed": 0, "failed": 0}


def test_sync_puts_back_a_file_that_vanished(upload, hosts, queued, trust_root):
    body = upload(ca_pem()).json()
    run_queued(queued)
    (trust_root / "kvm-1" / "corp-ca.pem").unlink()

    assert certificates_sync_host(host_name="kvm-1")["installed"] == 1
    assert (trust_root / "kvm-1" / "corp-ca.pem").read_text() == body["certificate"]
    assert len(hash_links(trust_root / "kvm-1")) == 1


def test_an_install_that_fails_is_shown_and_retried_by_the_next_sync(
    upload, admin_api, hosts, queued, settings, tmp_path
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the trust root should be")
    settings.STENCIL_AGENT_TRUST_ROOT = blocker
    body = upload(ca_pem()).json()

    run_queued(queued)

    status = {h["host"]: h for h in admin_api.get(f"{URL}{body['id']}/").json()["hosts"]}
    assert status["kvm-1"]["state"] == "FAILED"
    assert "install corp-ca.pem" in status["kvm-1"]["error_text"]

    settings.STENCIL_AGENT_TRUST_ROOT = tmp_path / "trust"
    assert certificates_sync_host(host_name="kvm-1")["installed"] == 1
    row = HostCertificate.objects.get(certificate__uuid=body["id"], host__name="kvm-1")
    assert (row.state, row.error_text) == ("INSTALLED", "")


def test_certificates_with_the_same_subject_get_numbered_hash_links(
    upload, hosts, queued, trust_root
):
    upload(self_signed_pem(cn="same.example"), alias="a-first")
    second = upload(self_signed_pem(cn="same.example"), alias="b-second").json()
    run_queued(queued)
    folder = trust_root / "kvm-1"
    digest = subject_hash(folder / "a-first.pem")

    assert hash_links(folder) == {f"{digest}.0": "a-first.pem", f"{digest}.1": "b-second.pem"}

    cert = DirectDownloadCertificate.objects.get(alias="a-first")
    DirectDownloadCertificate.objects.filter(pk=cert.pk).update(revoked_at=timezone.now())
    certificates_sync_host(host_name="kvm-1")

    # No gap: OpenSSL stops looking at the first missing number.
    assert hash_links(folder) == {f"{digest}.0": "b-second.pem"}
    assert states(second["id"])["kvm-1"] == "INSTALLED"


# Revoke -----------------------------------------------------------------------------------


def test_revoke_removes_it_from_every_host(
    upload, admin_api, zone, hosts, queued, trust_root, django_capture_on_commit_callbacks
):
    body = upload(ca_pem()).json()
    run_queued(queued)
    make_host(zone, "kvm-3")
    certificates_sync_host(host_name="kvm-3")

    response = revoke(admin_api, body["id"], django_capture_on_commit_callbacks)

    assert response.status_code == 202
    assert response.json()["revoked_at"] is not None
    assert states(body["id"]) == {"kvm-1": "REMOVING", "kvm-2": "REMOVING", "kvm-3": "REMOVING"}
    assert sorted((action, call["queue"]) for action, call in queued) == [
        ("remove", "host.kvm-1"),
        ("remove", "host.kvm-2"),
        ("remove", "host.kvm-3"),
    ]
    run_queued(queued)
    assert states(body["id"]) == {"kvm-1": "REMOVED", "kvm-2": "REMOVED", "kvm-3": "REMOVED"}
    for name in ("kvm-1", "kvm-2", "kvm-3"):
        assert not (trust_root / name / "corp-ca.pem").exists()
        assert hash_links(trust_root / name) == {}

    # A repeat is a no-op: 200, nothing queued, nothing changed.
    revoked_at = DirectDownloadCertificate.objects.get(uuid=body["id"]).revoked_at
    with django_capture_on_commit_callbacks() as callbacks:
        again = admin_api.post(f"{URL}{body['id']}/revoke/")
    assert again.status_code == 200
    assert callbacks == []
    assert DirectDownloadCertificate.objects.get(uuid=body["id"]).revoked_at == revoked_at
    # The remove task redelivered changes nothing either.
    cert_id = DirectDownloadCertificate.objects.get(uuid=body["id"]).pk
    assert certificate_remove_on_host(host_name="kvm-1", certificate_id=cert_id).state == "REMOVED"


def test_a_pending_install_that_runs_after_the_revoke_installs_nothing(
    upload, admin_api, hosts, queued, trust_root, django_capture_on_commit_callbacks
):
    body = upload(ca_pem()).json()
    installs = list(queued)
    queued.clear()
    revoke(admin_api, body["id"], django_capture_on_commit_callbacks)

    run_queued(installs + queued)  # the installs were ahead of the removals on each queue

    assert states(body["id"]) == {"kvm-1": "REMOVED", "kvm-2": "REMOVED"}
    assert not list(trust_root.glob("*/*.pem"))


def test_sync_removes_a_revoked_certificate_the_host_missed(
    upload, admin_api, hosts, queued, trust_root, django_capture_on_commit_callbacks
):
    body = upload(ca_pem()).json()
    run_queued(queued)
    revoke(admin_api, body["id"], django_capture_on_commit_callbacks)
    queued.clear()  # kvm-1 was stopped: its removal never ran

    assert certificates_sync_host(host_name="kvm-1") == {"installed": 0, "removed": 1, "failed": 0}
    assert not (trust_root / "kvm-1" / "corp-ca.pem").exists()
    assert states(body["id"])["kvm-1"] == "REMOVED"


def test_a_revoked_alias_can_be_reused_and_the_late_removal_keeps_the_new_file(
    upload, admin_api, hosts, queued, trust_root, django_capture_on_commit_callbacks
):
    old = upload(ca_pem()).json()
    run_queued(queued)
    revoke(admin_api, old["id"], django_capture_on_commit_callbacks)
    removals = list(queued)
    queued.clear()

    new = upload(ca_pem()).json()  # same alias, new certificate
    assert new["alias"] == "corp-ca"
    run_queued(queued)  # installs of the new one first...
    run_queued(removals)  # ...then the old one's removals arrive

    assert states(old["id"]) == {"kvm-1": "REMOVED", "kvm-2": "REMOVED"}
    assert states(new["id"]) == {"kvm-1": "INSTALLED", "kvm-2": "INSTALLED"}
    pem = trust_root / "kvm-1" / "corp-ca.pem"
    assert pem.read_text() == new["certificate"]
    assert hash_links(trust_root / "kvm-1") == {f"{subject_hash(pem)}.0": "corp-ca.pem"}


# The point of it: HTTPS downloads on a host trust what is installed there -----------------------


@pytest.fixture(scope="module")
def mirror_ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def https_mirror(mirror_ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    mirror_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def loopback_allowed(settings):
    settings.STENCIL_URL_DENIED_NETWORKS = list(DEFAULT_DENIED_NETWORKS)
    settings.STENCIL_URL_ALLOW_LOOPBACK = True


def test_https_download_fails_before_the_certificate_is_installed_and_works_after(
    upload,
    admin_api,
    hosts,
    queued,
    trust_root,
    tmp_path,
    https_mirror,
    mirror_ca,
    loopback_allowed,
    django_capture_on_commit_callbacks,
):
    data = os.urandom(256 * 1024)
    https_mirror.expect_request("/debian-12.qcow2").respond_with_data(data)
    url = f"https://127.0.0.1:{https_mirror.port}/debian-12.qcow2"
    dest = tmp_path / "debian-12.qcow2"

    # No trust directory yet.
    with pytest.raises(DownloadError, match="certificate verification failed"):
        download_to_file(url, dest, ca_dir=ca_dir_for("kvm-1"), **NO_RETRY)
    # A trust directory with another CA in it.
    upload(ca_pem(), alias="unrelated")
    run_queued(queued)
    assert ca_dir_for("kvm-1") is not None
    with pytest.raises(DownloadError, match="certificate verification failed"):
        download_to_file(url, dest, ca_dir=ca_dir_for("kvm-1"), **NO_RETRY)
    assert not dest.exists()

    body = upload(ca_pem(mirror_ca), alias="mirror-ca").json()
    run_queued(queued)

    result = download_to_file(url, dest, ca_dir=ca_dir_for("kvm-1"), **NO_RETRY)
    assert dest.read_bytes() == data
    assert result.size == len(data)

    # Revoked: the host no longer trusts the mirror.
    revoke(admin_api, body["id"], django_capture_on_commit_callbacks)
    run_queued(queued)
    with pytest.raises(DownloadError, match="certificate verification failed"):
        download_to_file(url, tmp_path / "again.qcow2", ca_dir=ca_dir_for("kvm-1"), **NO_RETRY)


# Listing ------------------------------------------------------------------------------------


def test_list_and_filters(upload, admin_api, hosts, queued):
    upload(ca_pem(), alias="corp-ca")
    upload(ca_pem(), alias="lab-ca")
    other_zone = ZoneFactory(name="zone-c")
    upload(ca_pem(), alias="corp-ca", zone_=other_zone)
    run_queued(queued)

    rows = admin_api.get(URL).json()["results"]
    assert len(rows) == 3
    first = next(row for row in rows if row["alias"] == "lab-ca")
    assert [(h["host"], h["state"]) for h in first["hosts"]] == [
        ("kvm-1", "INSTALLED"),
        ("kvm-2", "INSTALLED"),
    ]
    assert set(first["hosts"][0]) == {"host", "host_id", "state", "error_text", "updated_at"}

    by_zone = admin_api.get(URL, {"zone": str(other_zone.uuid)}).json()["results"]
    assert [(row["alias"], row["zone_name"]) for row in by_zone] == [("corp-ca", "zone-c")]
    by_alias = admin_api.get(URL, {"alias": "corp-ca"}).json()["results"]
    assert sorted(row["zone_name"] for row in by_alias) == ["zone-a", "zone-c"]

    certificate_revoke(
        certificate_id=DirectDownloadCertificate.objects.get(alias="lab-ca").pk, actor=None
    )
    revoked = admin_api.get(URL, {"revoked": "true"}).json()["results"]
    assert [row["alias"] for row in revoked] == ["lab-ca"]
    assert len(admin_api.get(URL, {"revoked": "false"}).json()["results"]) == 2


def test_list_query_count_is_constant(upload, admin_api, hosts, queued):
    upload(ca_pem(), alias="ca-0")
    with CaptureQueriesContext(connection) as one:
        assert len(admin_api.get(URL).json()["results"]) == 1
    for n in range(1, 5):
        upload(ca_pem(), alias=f"ca-{n}")
    run_queued(queued)
    with CaptureQueriesContext(connection) as five:
        rows = admin_api.get(URL).json()["results"]
    assert len(rows) == 5 and all(len(row["hosts"]) == 2 for row in rows)
    assert len(five) == len(one) == 3, [q["sql"][:80] for q in five.captured_queries]


# Admin ------------------------------------------------------------------------------------


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def test_admin_lists_shows_hosts_and_revokes(
    upload, staff, hosts, queued, trust_root, django_capture_on_commit_callbacks
):
    body = upload(ca_pem()).json()
    run_queued(queued)
    cert = DirectDownloadCertificate.objects.get(uuid=body["id"])

    listing = staff.get(reverse("admin:agents_app_directdownloadcertificate_changelist"))
    assert listing.status_code == 200
    assert b"corp-ca" in listing.content and b"2 installed" in listing.content

    page = staff.get(reverse("admin:agents_app_directdownloadcertificate_change", args=[cert.pk]))
    assert page.status_code == 200
    assert b"kvm-1" in page.content and b"kvm-2" in page.content

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            reverse("admin:agents_app_directdownloadcertificate_changelist"),
            {"action": "revoke_selected", "_selected_action": [cert.pk]},
            follow=True,
        )
    assert b"Revoked: 1." in response.content
    cert.refresh_from_db()
    assert cert.revoked_at is not None
    assert sorted(call["queue"] for _, call in queued) == ["host.kvm-1", "host.kvm-2"]
    run_queued(queued)
    assert not list(trust_root.glob("*/*.pem"))


# The agent: on start and with each heartbeat -------------------------------------------------


class OneBeat:
    """A stop event that lets the heartbeat loop run exactly once."""

    def __init__(self):
        self.waits = 0

    def wait(self, timeout):
        self.waits += 1
        return self.waits > 1

    def set(self):
        self.waits = 99


def test_agent_start_syncs_certificates(upload, zone, hosts, queued, trust_root, monkeypatch):
    upload(ca_pem())
    queued.clear()
    from project.celery import app

    class NoWorker:
        def __init__(self, **kwargs):
            pass

        def start(self):
            pass  # the agent's Celery worker is not what this test is about

    monkeypatch.setattr(app, "Worker", NoWorker)

    call_command(
        "run_agent",
        "--name",
        "kvm-3",
        "--zone",
        zone.name,
        "--libvirt-uri",
        "test:///default",
        stdout=StringIO(),
    )

    assert (trust_root / "kvm-3" / "corp-ca.pem").exists()


def test_heartbeat_syncs_certificates_and_survives_a_failing_sync(
    upload, hosts, queued, trust_root, monkeypatch, caplog
):
    upload(ca_pem())
    queued.clear()
    # Outside a test, the loop drops stale connections; here that would end the test's transaction.
    monkeypatch.setattr(run_agent, "close_old_connections", lambda: None)

    run_agent.Command._heartbeats("kvm-1", OneBeat())
    assert (trust_root / "kvm-1" / "corp-ca.pem").exists()

    def broken(**kwargs):
        raise RuntimeError("trust directory on fire")

    monkeypatch.setattr(run_agent.trust, "certificates_sync_host", broken)
    run_agent.Command._heartbeats("kvm-1", OneBeat())  # returns: the loop did not crash
    assert "certificate sync of host kvm-1 failed" in caplog.text


def test_trust_dir_refuses_host_names_that_are_not_plain_names(trust_root):
    assert trust_dir_for("kvm-1") == trust_root / "kvm-1"
    for bad in ("", ".", "..", "a/b", "../etc"):
        with pytest.raises(ValueError):
            trust_dir_for(bad)


# Races, run for real: threads on their own PostgreSQL connections ------------------------------


def run_together(*steps):
    """Start the steps at the same instant, each on its own connection; results or errors."""
    barrier = threading.Barrier(len(steps))

    def run(step):
        try:
            barrier.wait()
            return step()
        except StencilError as exc:
            return exc
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        return list(pool.map(run, steps))


@pytest.mark.django_db(transaction=True)
def test_two_uploads_of_one_alias_at_once_store_one(zone, admin_user, queued, trust_root):
    make_host(zone, "kvm-1")
    for n in range(10):
        alias = f"race-{n}"
        results = run_together(
            *[
                lambda a=alias: certificate_upload(
                    alias=a, pem=ca_pem(), zone=zone, actor=admin_user
                )
                for _ in range(2)
            ]
        )
        errors = [r for r in results if isinstance(r, StencilError)]
        assert len(errors) == 1 and errors[0].field == "alias", results
        assert DirectDownloadCertificate.objects.filter(alias=alias).count() == 1
    assert HostCertificate.objects.count() == 10
    assert len(queued) == 10  # one install per stored certificate, none for the losers


@pytest.mark.django_db(transaction=True)
def test_an_install_racing_a_revoke_never_leaves_the_file(zone, admin_user, queued, trust_root):
    make_host(zone, "kvm-1")
    for n in range(15):
        cert = certificate_upload(alias=f"race-{n}", pem=ca_pem(), zone=zone, actor=admin_user)
        queued.clear()
        run_together(
            lambda pk=cert.pk: certificate_install_on_host(host_name="kvm-1", certificate_id=pk),
            lambda pk=cert.pk: certificate_revoke(certificate_id=pk, actor=admin_user),
        )
        run_queued(queued)  # the removal the revoke queued, if the install came first

        assert not (trust_root / "kvm-1" / cert.file_name).exists()
        row = HostCertificate.objects.get(certificate=cert)
        assert row.state == "REMOVED", row.state
