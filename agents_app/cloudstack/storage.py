"""Administrators' commands of compute: direct-download certificates (the same services as
/api/v1/direct-download-certificates/) and prepareTemplate (POST /pool-copies/prepare/)."""

from templates_app import selectors as catalogue
from templates_app.cloudstack.errors import CloudStackError
from templates_app.cloudstack.registry import LIST_PARAMS, Call, Command, Param, register
from templates_app.cloudstack.responses import cs_date, list_response, paged
from templates_app.models import Zone
from versions_app.cloudstack.responses import template_rows, with_copies

from .. import certificates, pool_copies
from ..models import DirectDownloadCertificate, PrimaryPool

FIELDS = {"alias": "name", "certificate": "certificate", "zone": "zoneid", "pools": "storageid"}


def _zone(call: Call, value) -> Zone:
    zone = catalogue.zones_list().filter(uuid=value).first()
    if zone is None:
        raise call.invalid("zoneid", value)
    return zone


def _kvm_only(call: Call, hypervisor: str) -> None:
    if hypervisor.upper() != "KVM":
        raise call.invalid("hypervisor", hypervisor, "direct download being for KVM only")


def certificate_row(cert: DirectDownloadCertificate) -> dict:
    return {
        "id": str(cert.uuid),
        "alias": cert.alias,
        "hypervisor": "KVM",
        "zoneid": str(cert.zone.uuid),
        "zonename": cert.zone.name,
        "subject": cert.subject,
        "issuer": cert.issuer,
        "serialnum": cert.serial,
        "validity": f"From: {cs_date(cert.not_before)} - To: {cs_date(cert.not_after)}",
        "version": "3",
        "fingerprint": cert.fingerprint_sha256,
        "revoked": cs_date(cert.revoked_at),
        "hostsmap": [
            {
                "hostid": str(row.host.uuid),
                "hostname": row.host.name,
                "status": row.state,
                "details": row.error_text,
            }
            for row in cert.host_certificates.all()
        ],
    }


def upload_certificate(call: Call, certificate, name, hypervisor, zoneid) -> dict:
    _kvm_only(call, hypervisor)
    cert = certificates.certificate_upload(
        alias=name, pem=certificate, zone=_zone(call, zoneid), actor=call.user
    )
    fresh = certificates.certificates_list().get(pk=cert.pk)
    return {"directdownloadcertificate": certificate_row(fresh)}


def revoke_certificate(call: Call, hypervisor, id=None, name=None, zoneid=None) -> dict:
    """By id, or by name and zone (the live certificate of that alias)."""
    _kvm_only(call, hypervisor)
    live = certificates.certificates_list()
    if id is not None:
        cert = live.filter(uuid=id).first()
        missing = ("id", id)
    elif name is not None and zoneid is not None:
        cert = live.filter(alias=name, zone=_zone(call, zoneid), revoked_at__isnull=True).first()
        missing = ("name", name)
    else:
        raise CloudStackError("id: give the certificate's id, or its name and zoneid")
    if cert is None:
        raise call.invalid(*missing)
    certificates.certificate_revoke(certificate_id=cert.pk, actor=call.user)
    fresh = certificates.certificates_list().get(pk=cert.pk)
    return list_response("directdownloadcertificatehoststatus", certificate_row(fresh)["hostsmap"])


def list_certificates(
    call: Call,
    id=None,
    zoneid=None,
    hypervisor=None,
    listhosts=False,
    keyword=None,
    page=None,
    pagesize=None,
) -> dict:
    """listTemplateDirectDownloadCertificates: the live (not revoked) certificates, as the
    REST list; per-host states only with `listhosts`."""
    if hypervisor is not None:
        _kvm_only(call, hypervisor)
    certs = certificates.certificates_list().filter(revoked_at__isnull=True).order_by("alias")
    if id is not None:
        certs = certs.filter(uuid=id)
    if zoneid is not None:
        certs = certs.filter(zone=_zone(call, zoneid))
    if keyword:
        certs = certs.filter(alias__icontains=keyword)
    count = certs.count()
    rows = []
    for cert in paged(certs, page, pagesize):
        row = certificate_row(cert)
        if not listhosts:
            del row["hostsmap"]
        rows.append(row)
    return list_response("directdownloadcertificate", rows, count=count)


def prepare_template(call: Call, templateid, zoneid, storageid=None) -> dict:
    """Pin the template on the zone's pools (or the one pool `storageid`), copied now."""
    template = catalogue.template_detail_queryset(user=call.user).filter(uuid=templateid).first()
    if template is None:
        raise call.invalid("templateid", templateid)
    zone = _zone(call, zoneid)
    pool_ids = None
    if storageid is not None:
        pool = PrimaryPool.objects.filter(uuid=storageid, zone=zone).first()
        if pool is None:
            raise call.invalid("storageid", storageid)
        pool_ids = [pool.pk]
    pool_copies.template_prepare(
        template_id=template.pk,
        pool_ids=pool_ids,
        zone_id=None if pool_ids else zone.pk,
        actor=call.user,
    )
    fresh = with_copies(catalogue.template_detail_queryset(user=call.user).filter(pk=template.pk))
    return list_response("template", template_rows(fresh, user=call.user, zone=zone))


HYPERVISOR = Param("hypervisor", required=True, description="Hypervisor type (KVM)")


def register_storage_commands() -> None:
    for command in (
        Command(
            "uploadTemplateDirectDownloadCertificate",
            upload_certificate,
            (
                Param("certificate", required=True, length=65536, description="PEM certificate"),
                Param("name", required=True, description="Alias of the certificate"),
                HYPERVISOR,
                Param("zoneid", "uuid", required=True, description="The zone's hosts get it"),
            ),
            "Upload a certificate for HTTPS direct template download on KVM hosts",
            staff_only=True,
            fields=FIELDS,
        ),
        Command(
            "revokeTemplateDirectDownloadCertificate",
            revoke_certificate,
            (
                HYPERVISOR,
                Param("id", "uuid", description="The certificate's id"),
                Param("name", description="The certificate's alias (with zoneid)"),
                Param("zoneid", "uuid", description="The certificate's zone (with name)"),
            ),
            "Revoke a direct download certificate from the hosts of its zone",
            staff_only=True,
            fields=FIELDS,
        ),
        Command(
            "listTemplateDirectDownloadCertificates",
            list_certificates,
            (
                Param("id", "uuid", description="The certificate's id"),
                Param("zoneid", "uuid", description="The zone"),
                Param("hypervisor", description="Hypervisor type (KVM)"),
                Param("listhosts", "boolean", description="With the state on each host"),
                *LIST_PARAMS,
            ),
            "List the uploaded certificates for direct download templates",
            entity="directdownloadcertificate",
            staff_only=True,
            fields=FIELDS,
        ),
        Command(
            "prepareTemplate",
            prepare_template,
            (
                Param("templateid", "uuid", required=True, description="The template"),
                Param("zoneid", "uuid", required=True, description="Its zone's pools get it"),
                Param("storageid", "uuid", description="Only this primary pool"),
            ),
            "Load a template into primary storage now (pinned: kept until unpinned)",
            staff_only=True,
            fields=FIELDS,
        ),
    ):
        register(command)
