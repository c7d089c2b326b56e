"""The CloudStack facade's administrator commands: direct-download certificates and
prepareTemplate, through the same services as the REST API; tenants are told they do not
exist (432) and nothing is written."""

import uuid

import pytest
import trustme

from agents_app.agent import heartbeat
from agents_app.models import DirectDownloadCertificate, PrimaryPool, TemplatePoolRef
from tests.cloudstack import call, keys_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def trust_root(settings, tmp_path):
    settings.STENCIL_AGENT_TRUST_ROOT = tmp_path / "trust"


@pytest.fixture
def up_host(zone):
    return heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")


def pem() -> str:
    return trustme.CA().cert_pem.bytes().decode()


def test_staff_uploads_and_revokes_a_certificate_as_the_rest_api_shows(
    admin_user, admin_api, zone, up_host
):
    pair = keys_for(admin_user)

    status, body = call(
        pair,
        "uploadTemplateDirectDownloadCertificate",
        method="post",
        certificate=pem(),
        name="corp-ca",
        hypervisor="KVM",
        zoneid=str(zone.uuid),
    )
    cert = body["directdownloadcertificate"]
    rest = admin_api.get(f"/api/v1/direct-download-certificates/{cert['id']}/").json()
    duplicate = call(
        pair,
        "uploadTemplateDirectDownloadCertificate",
        method="post",
        certificate=pem(),
        name="corp-ca",
        hypervisor="KVM",
        zoneid=str(zone.uuid),
    )
    revoked = call(
        pair,
        "revokeTemplateDirectDownloadCertificate",
        hypervisor="KVM",
        name="corp-ca",
        zoneid=str(zone.uuid),
    )

    assert status == 200
    assert (cert["alias"], cert["subject"], cert["zoneid"]) == (
        rest["alias"],
        rest["subject"],
        str(zone.uuid),
    )
    assert [(h["hostname"], h["status"]) for h in cert["hostsmap"]] == [("kvm-1", "PENDING")]
    assert duplicate[0] == 431
    assert duplicate[1]["errortext"].startswith("name: zone 'zone-a' already has a certificate")
    assert revoked[0] == 200
    assert [h["status"] for h in revoked[1]["directdownloadcertificatehoststatus"]] == ["REMOVING"]
    rest = admin_api.get(f"/api/v1/direct-download-certificates/{cert['id']}/").json()
    assert rest["revoked_at"] is not None


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"certificate": "not a certificate"}, "certificate: "),
        ({"hypervisor": "VMware"}, "Invalid parameter hypervisor value=VMware"),
        ({"zoneid": str(uuid.uuid4())}, "Invalid parameter zoneid"),
        ({"name": None}, "missing parameter name"),
    ],
)
def test_bad_certificates_are_431_and_store_nothing(admin_user, zone, params, text):
    base = {
        "certificate": pem(),
        "name": "corp-root",
        "hypervisor": "KVM",
        "zoneid": str(zone.uuid),
    }
    merged = {k: v for k, v in {**base, **params}.items() if v is not None}

    status, body = call(
        keys_for(admin_user), "uploadTemplateDirectDownloadCertificate", method="post", **merged
    )

    assert (status, body["errorcode"]) == (431, 431)
    assert text in body["errortext"]
    assert not DirectDownloadCertificate.objects.exists()


def test_tenants_do_not_see_administrator_commands(user, zone, register):
    pair = keys_for(user)
    template = register()

    upload = call(
        pair,
        "uploadTemplateDirectDownloadCertificate",
        method="post",
        certificate=pem(),
        name="ca",
        hypervisor="KVM",
        zoneid=str(zone.uuid),
    )
    prepare = call(pair, "prepareTemplate", templateid=str(template.uuid), zoneid=str(zone.uuid))
    apis = {api["name"] for api in call(pair, "listApis")[1]["api"]}

    assert upload[0] == prepare[0] == 432
    assert "prepareTemplate" not in apis and "uploadTemplateDirectDownloadCertificate" not in apis
    assert not DirectDownloadCertificate.objects.exists()
    assert not TemplatePoolRef.objects.exists()


def test_prepare_template_pins_it_on_the_zones_pools(
    admin_user, admin_api, zone, up_host, register
):
    pool = PrimaryPool.objects.create(zone=zone, name="pool-1", libvirt_pool_name="p", path="/p")
    pool.hosts.add(up_host)
    template = register()
    pair = keys_for(admin_user)

    status, body = call(
        pair, "prepareTemplate", templateid=str(template.uuid), zoneid=str(zone.uuid)
    )
    bad_pool = call(
        pair,
        "prepareTemplate",
        templateid=str(template.uuid),
        zoneid=str(zone.uuid),
        storageid=str(uuid.uuid4()),
    )

    assert status == 200 and [r["id"] for r in body["template"]] == [str(template.uuid)]
    copy = TemplatePoolRef.objects.get(template=template, pool=pool)
    assert copy.pinned
    rest = admin_api.get("/api/v1/pool-copies/").json()["results"]
    assert [(c["template"], c["pinned"]) for c in rest] == [(str(template.uuid), True)]
    assert bad_pool[0] == 431 and "Invalid parameter storageid" in bad_pool[1]["errortext"]
