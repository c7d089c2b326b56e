"""listTemplates/listIsos, registerTemplate/registerIso, updateTemplate/updateIso,
deleteTemplate/deleteIso (async) and getUploadParamsForTemplate: thin callers of the same
selectors and services as POST/GET/PATCH/DELETE /api/v1/templates/."""

import uuid as uuid_lib

from django.db import transaction
from django.db.models import Q

from templates_app import extracts, launch_permissions, services, uploads
from templates_app import selectors as catalogue
from templates_app.choices import (
    DownloadState,
    StoreRefState,
    TemplateFilter,
    TemplateKind,
    TemplateState,
)
from templates_app.cloudstack.errors import CloudStackError
from templates_app.cloudstack.jobs import AsyncStart, JobOutcome, register_resolver
from templates_app.cloudstack.ostypes import os_type_named
from templates_app.cloudstack.registry import LIST_PARAMS, Call, Command, Param, register
from templates_app.cloudstack.responses import cs_date, list_response, paged
from templates_app.models import Template, TemplateStoreRef, Zone

from .. import selectors
from .responses import paged_template_rows, template_rows, with_copies

ENTITY = {TemplateKind.TEMPLATE: "template", TemplateKind.ISO: "iso"}
# Stencil's field names -> the CloudStack parameter a refusal names.
FIELDS = {
    "zones": "zoneid",
    "zone": "zoneid",
    "image_format": "format",
    "os_type": "ostypeid",
    "display_text": "displaytext",
    "is_public": "ispublic",
    "is_featured": "isfeatured",
    "direct_download": "directdownload",
}


def _zone(call: Call, name: str, value) -> Zone:
    zone = catalogue.zones_list().filter(uuid=value).first()
    if zone is None:
        raise call.invalid(name, value)
    return zone


def _os_type(call: Call, ostypeid) -> str:
    if ostypeid is None:
        return ""
    description = os_type_named(ostypeid)
    if description is None:
        raise call.invalid("ostypeid", ostypeid)
    return description


def _template_filter(call: Call, name: str, value: str) -> str:
    if value not in TemplateFilter.values:
        raise call.invalid(name, value, f"it not being one of {', '.join(TemplateFilter.values)}")
    return value


def _listing(call: Call, kind: str, template_filter: str, params: dict) -> dict:
    """listTemplates and listIsos: the REST listing (one row per lineage, per viewer) filtered
    as CloudStack filters, then one row per zone."""
    ids = [params["id"]] if params.get("id") else params.get("ids") or []
    states = [TemplateState.ACTIVE, TemplateState.INACTIVE, TemplateState.REMOVED]
    queryset = selectors.template_list(
        user=call.user,
        template_filter=template_filter,
        states=states if params.get("showremoved") else None,
        all_versions=bool(ids),
    ).filter(kind=kind)
    if ids:
        queryset = queryset.filter(uuid__in=ids)
    if params.get("name"):
        queryset = queryset.filter(name=params["name"])
    if params.get("hypervisor"):
        queryset = queryset.filter(hypervisor__iexact=params["hypervisor"])
    if params.get("keyword"):
        keyword = params["keyword"]
        queryset = queryset.filter(Q(name__icontains=keyword) | Q(display_text__icontains=keyword))
    zone = None
    if params.get("zoneid"):
        zone = _zone(call, "zoneid", params["zoneid"])
        in_zone = Template.zones.through.objects.filter(zone=zone).values("template_id")
        queryset = queryset.filter(Q(cross_zones=True) | Q(pk__in=in_zone))
    if params.get("isready") is None:
        page, count = paged_template_rows(
            queryset,
            user=call.user,
            zone=zone,
            page=params.get("page"),
            pagesize=params.get("pagesize"),
        )
        return list_response(ENTITY[kind], page, count=count)
    # Readiness is known per row only: filter the rows, then page them.
    rows = template_rows(with_copies(queryset), user=call.user, zone=zone)
    rows = [row for row in rows if row["isready"] == params["isready"]]
    page = paged(rows, params.get("page"), params.get("pagesize"))
    return list_response(ENTITY[kind], page, count=len(rows))


def list_templates(call: Call, templatefilter: str, **params) -> dict:
    return _listing(
        call,
        TemplateKind.TEMPLATE,
        _template_filter(call, "templatefilter", templatefilter),
        params,
    )


def list_isos(call: Call, isofilter: str = TemplateFilter.EXECUTABLE, **params) -> dict:
    return _listing(call, TemplateKind.ISO, _template_filter(call, "isofilter", isofilter), params)


def _detail_pairs(groups: list[dict[str, str]] | None) -> list[dict[str, str]]:
    """`details[0].key=K&details[0].value=V` is one detail K=V; any other
    `details[0].NAME=VALUE` is the detail NAME=VALUE (CloudStack's map form)."""
    pairs = []
    for group in groups or []:
        if set(group) == {"key", "value"}:
            pairs.append({"key": group["key"], "value": group["value"]})
        else:
            pairs.extend({"key": key, "value": value} for key, value in group.items())
    return pairs


def _registration_zones(call: Call, zoneid: str | None, zoneids: list | None):
    """(zones, cross_zones): `zoneid` or `zoneids`; -1 is every zone, and so is neither
    (RegisterTemplateCmd.getZoneIds answers null, all zones, then: Terraform's provider
    registers so when its `zone` is not set)."""
    wanted = list(zoneids or []) or ([zoneid] if zoneid else [])
    if not wanted or "-1" in [str(value) for value in wanted]:
        return [], True
    zones = []
    for value in wanted:
        try:
            value = uuid_lib.UUID(str(value))
        except ValueError:
            raise call.invalid("zoneid", value) from None
        zones.append(_zone(call, "zoneid", value))
    return zones, False


def _register(call: Call, kind: str, params: dict) -> dict:
    zones, cross_zones = _registration_zones(call, params.get("zoneid"), params.get("zoneids"))
    image_format = "ISO" if kind == TemplateKind.ISO else params["format"].upper()
    template = services.template_register(
        account=call.account,
        actor=call.user,
        name=params["name"],
        display_text=params.get("displaytext", ""),
        kind=kind,
        image_format=image_format,
        hypervisor=params.get("hypervisor", "KVM").upper(),
        url=params["url"],
        zones=zones,
        cross_zones=cross_zones,
        os_type=_os_type(call, params.get("ostypeid")),
        checksum=params.get("checksum", ""),
        is_public=params.get("ispublic", False),
        is_featured=params.get("isfeatured", False),
        direct_download=params.get("directdownload", False),
        details=_detail_pairs(params.get("details")),
    )
    fresh = with_copies(catalogue.template_detail_queryset(user=call.user).filter(pk=template.pk))
    return list_response(ENTITY[kind], template_rows(fresh, user=call.user))


def register_template(call: Call, **params) -> dict:
    return _register(call, TemplateKind.TEMPLATE, params)


def register_iso(call: Call, **params) -> dict:
    return _register(call, TemplateKind.ISO, params)


def owned_template(call: Call, template_id, kind: str, *, name: str = "id") -> Template:
    """A template the caller may change (its account's, or staff); anything else, another
    account's included, is answered as an id that does not exist."""
    template = (
        catalogue.template_detail_queryset(user=call.user)
        .filter(uuid=template_id, kind=kind)
        .first()
    )
    if template is None or not catalogue.may_change_template(call.user, template):
        raise call.invalid(name, template_id)
    return template


def _update(call: Call, kind: str, params: dict) -> dict:
    template = owned_template(call, params["id"], kind)
    changes = {}
    if "name" in params:
        changes["name"] = params["name"]
    if "displaytext" in params:
        changes["display_text"] = params["displaytext"]
    if "ostypeid" in params:
        changes["os_type"] = _os_type(call, params["ostypeid"])
    if changes:
        services.template_update(template_id=template.pk, actor=call.user, changes=changes)
    fresh = with_copies(catalogue.template_detail_queryset(user=call.user).filter(pk=template.pk))
    rows = template_rows(fresh, user=call.user)
    return {ENTITY[kind]: rows[0] if rows else {}}


def update_template(call: Call, **params) -> dict:
    return _update(call, TemplateKind.TEMPLATE, params)


def update_iso(call: Call, **params) -> dict:
    return _update(call, TemplateKind.ISO, params)


def _delete(call: Call, kind: str, id, zoneid=None, forced=None) -> AsyncStart:
    """DELETE /templates/{id}/: INACTIVE at once; the sweep removes the bytes when nothing uses
    it (`forced` is not needed: running VMs keep working). A template is deleted from all its
    zones: naming one zone of several is refused."""
    template = owned_template(call, id, kind)
    if zoneid is not None:
        zone = _zone(call, "zoneid", zoneid)
        zones = set(template.zones.values_list("pk", flat=True))
        if template.cross_zones or zones != {zone.pk}:
            raise CloudStackError(
                "zoneid: deleting from one zone of several is not supported; omit zoneid to "
                "delete it from every zone"
            )
    services.template_deactivate(template_id=template.pk, actor=call.user)
    return AsyncStart(template, "Template")


def delete_template(call: Call, **params) -> AsyncStart:
    return _delete(call, TemplateKind.TEMPLATE, **params)


def delete_iso(call: Call, **params) -> AsyncStart:
    return _delete(call, TemplateKind.ISO, **params)


def deleted(job, template: Template) -> JobOutcome:
    """The delete is done when the command returns (INACTIVE; the sweep follows)."""
    return JobOutcome.success({"success": True})


def _copy(call: Call, kind: str, params: dict) -> AsyncStart:
    """copyTemplate: the template gains the destination zones; their stores download it."""
    template = owned_template(call, params["id"], kind)
    if params.get("sourcezoneid") is not None:
        source = _zone(call, "sourcezoneid", params["sourcezoneid"])
        if not template.cross_zones and not template.zones.filter(pk=source.pk).exists():
            raise call.invalid("sourcezoneid", params["sourcezoneid"])
    wanted = params.get("destzoneids") or (
        [params["destzoneid"]] if params.get("destzoneid") else []
    )
    if not wanted:
        raise CloudStackError(
            f"Unable to execute API command {call.command.lower()} due to missing parameter "
            "destzoneid (or destzoneids)"
        )
    zones = [_zone(call, "destzoneid", value) for value in wanted]
    services.template_zones_add(template_id=template.pk, zones=zones, actor=call.user)
    return AsyncStart(template, "Template", context={"zones": [str(z.uuid) for z in zones]})


def copy_template(call: Call, **params) -> AsyncStart:
    return _copy(call, TemplateKind.TEMPLATE, params)


def copy_iso(call: Call, **params) -> AsyncStart:
    return _copy(call, TemplateKind.ISO, params)


FAILED_COPY = (DownloadState.DOWNLOAD_ERROR, DownloadState.ABANDONED)


def copied(job, template: Template) -> JobOutcome | None:
    """Done when every copy in the destination zones is READY (a direct-download template has
    none: done at once); failed when one of them failed; pending while they download."""
    copies = list(
        TemplateStoreRef.objects.filter(
            template=template, store__zone__uuid__in=job.context["zones"]
        )
    )
    failed = [ref for ref in copies if ref.download_state in FAILED_COPY]
    if failed:
        return JobOutcome.failure(failed[0].error_text or failed[0].download_state)
    if any(ref.state != StoreRefState.READY for ref in copies):
        return None
    zone = catalogue.zones_list().get(uuid=job.context["zones"][0])
    fresh = with_copies(catalogue.template_detail_queryset(user=job.user).filter(pk=template.pk))
    rows = template_rows(fresh, user=job.user, zone=zone)
    return JobOutcome.success({ENTITY[template.kind]: rows[0] if rows else {}})


def _extract(call: Call, kind: str, params: dict) -> AsyncStart:
    """extractTemplate / extractIso (mode HTTP_DOWNLOAD): POST /templates/{id}/extract/. The
    job succeeds with the signed URL once a store copy is READY (at once when one is; a
    direct-download template is copied into a store first)."""
    template = owned_template(call, params["id"], kind)
    if str(params["mode"]).upper() != extracts.EXTRACT_MODE:
        raise call.invalid("mode", params["mode"], "only HTTP_DOWNLOAD being supported")
    zone = _zone(call, "zoneid", params["zoneid"]) if params.get("zoneid") else None
    extract = extracts.template_extract(
        template_id=template.pk, actor=call.user, base_url=call.base_url, zone=zone
    )
    context = {"ref": extract.copy.pk, "base_url": call.base_url}
    return AsyncStart(template, "Template" if kind == TemplateKind.TEMPLATE else "Iso", context)


def extract_template(call: Call, **params) -> AsyncStart:
    return _extract(call, TemplateKind.TEMPLATE, params)


def extract_iso(call: Call, **params) -> AsyncStart:
    return _extract(call, TemplateKind.ISO, params)


def extract_response(extract: extracts.Extract) -> dict:
    """CloudStack's ExtractResponse."""
    zone = extract.copy.store.zone
    percent = 100 if extract.ready else extract.copy.download_percent
    return {
        "id": str(extract.template.uuid),
        "name": extract.template.name,
        "extractId": str(extract.copy.pk),
        "accountid": str(extract.template.account.uuid),
        "url": extract.url,
        "state": extract.state,
        "status": extract.state,
        "zoneid": str(zone.uuid),
        "zonename": zone.name,
        "extractMode": extracts.EXTRACT_MODE,
        "uploadpercentage": percent,
        "created": cs_date(extract.copy.created_at),
    }


def extracted(job, template: Template) -> JobOutcome | None:
    """Done when the chosen store copy is READY (the URL is signed then); failed when its
    download failed or the template went; pending while it is being copied."""
    ref = TemplateStoreRef.objects.filter(pk=job.context["ref"]).first()
    if ref is None or template.state == TemplateState.REMOVED:
        return JobOutcome.failure("the template's store copy is gone")
    if ref.download_state in FAILED_COPY:
        return JobOutcome.failure(ref.error_text or ref.download_state)
    extract = extracts.extract_of_copy(ref, base_url=job.context["base_url"])
    if not extract.ready:
        return None
    return JobOutcome.success({ENTITY[template.kind]: extract_response(extract)})


def _update_permissions(call: Call, kind: str, params: dict) -> dict:
    """POST /templates/{id}/permissions/ (op, accounts by name) and the PATCH of `is_public` /
    `is_featured`, in one transaction: a refusal of either writes neither."""
    template = owned_template(call, params["id"], kind)
    changes = {
        field: params[name]
        for name, field in (("ispublic", "is_public"), ("isfeatured", "is_featured"))
        if name in params
    }
    accounts = []
    for name in params.get("accounts") or []:
        account = catalogue.accounts_list().filter(name=name).first()
        if account is None:
            raise call.invalid("accounts", name)
        accounts.append(account)
    if "op" not in params and accounts:
        raise CloudStackError(
            f"Unable to execute API command {call.command.lower()} due to missing parameter op"
        )
    with transaction.atomic():
        if "op" in params:
            launch_permissions.template_permissions_update(
                template_id=template.pk, actor=call.user, op=params["op"], accounts=accounts
            )
        if changes:
            services.template_update(template_id=template.pk, actor=call.user, changes=changes)
    return {"success": True}


def update_template_permissions(call: Call, **params) -> dict:
    return _update_permissions(call, TemplateKind.TEMPLATE, params)


def update_iso_permissions(call: Call, **params) -> dict:
    return _update_permissions(call, TemplateKind.ISO, params)


def _list_permissions(call: Call, kind: str, id) -> dict:
    template = owned_template(call, id, kind)
    names = list(template.shared_with.order_by("name").values_list("name", flat=True))
    entity = "templatepermission"
    return {entity: {"id": str(template.uuid), "ispublic": template.is_public, "account": names}}


def list_template_permissions(call: Call, id) -> dict:
    return _list_permissions(call, TemplateKind.TEMPLATE, id)


def list_iso_permissions(call: Call, id) -> dict:
    return _list_permissions(call, TemplateKind.ISO, id)


def get_upload_params(call: Call, **params) -> dict:
    """POST /templates/upload-params/: the template and its copy are written now; the client
    POSTs the bytes to `postURL` with the signed metadata."""
    upload = uploads.template_upload_params(
        account=call.account,
        actor=call.user,
        name=params["name"],
        display_text=params.get("displaytext", ""),
        image_format=params["format"].upper(),
        zone=_zone(call, "zoneid", params["zoneid"]),
        base_url=call.base_url,
        os_type=_os_type(call, params.get("ostypeid")),
        checksum=params.get("checksum", ""),
        is_public=params.get("ispublic", False),
        size=params.get("size", 0),
    )
    return {
        "getuploadparams": {
            "id": upload.id,
            "postURL": upload.post_url,
            "metadata": upload.metadata,
            "expires": upload.expires,
            "signature": upload.signature,
        }
    }


LISTING_PARAMS = (
    Param("id", "uuid", description="The template ID"),
    Param("ids", "list", description="Comma-separated template IDs"),
    Param("name", description="The template name"),
    Param("zoneid", "uuid", description="List templates by zone ID"),
    Param("hypervisor", description="The hypervisor"),
    Param("showremoved", "boolean", description="Show removed templates as well (staff)"),
    Param("isready", "boolean", description="List only ready (or not ready) rows"),
    *LIST_PARAMS,
)
REGISTRATION_PARAMS = (
    Param("name", required=True, description="The name of the template"),
    Param("displaytext", length=4096, description="The display text of the template"),
    Param("url", required=True, length=2048, description="The URL of where the image is"),
    Param("zoneid", description="The zone ID; -1 (or no zoneid nor zoneids) for all zones"),
    Param("zoneids", "list", description="Zone IDs; -1 for all zones"),
    Param("ostypeid", "uuid", description="The OS type (listOsTypes)"),
    Param("checksum", length=160, description="{ALGORITHM}hex digest of the image"),
    Param("directdownload", "boolean", description="Hosts download it straight from the URL"),
    Param("ispublic", "boolean", description="Usable by every account"),
    Param("isfeatured", "boolean", description="Featured (administrators)"),
    Param("details", "map", description="Details, e.g. details[0].key=HTTP_HEADER"),
)
DELETE_PARAMS = (
    Param("id", "uuid", required=True, description="The ID of the template"),
    Param("zoneid", "uuid", description="The zone (only the template's single zone)"),
    Param("forced", "boolean", description="Ignored: VMs keep their template's bytes"),
)
COPY_PARAMS = (
    Param("id", "uuid", required=True, description="The ID of the template"),
    Param("destzoneid", "uuid", description="The zone it is copied to"),
    Param("destzoneids", "list", description="Zones it is copied to"),
    Param("sourcezoneid", "uuid", description="A zone it is in (optional)"),
)
EXTRACT_PARAMS = (
    Param("id", "uuid", required=True, description="The ID of the template"),
    Param("mode", required=True, description="HTTP_DOWNLOAD (FTP_UPLOAD is not supported)"),
    Param("zoneid", "uuid", description="The zone to extract from"),
    Param("url", length=2048, description="Ignored (FTP_UPLOAD only)"),
)
PERMISSION_PARAMS = (
    Param("id", "uuid", required=True, description="The ID of the template"),
    Param("op", description="add, remove or reset (with accounts)"),
    Param("accounts", "list", description="Comma-separated account names"),
    Param("ispublic", "boolean", description="Usable by every account"),
    Param("isfeatured", "boolean", description="Featured (administrators)"),
)
UPDATE_PARAMS = (
    Param("id", "uuid", required=True, description="The ID of the template"),
    Param("name", description="The new name"),
    Param("displaytext", length=4096, description="The new display text"),
    Param("ostypeid", "uuid", description="The new OS type"),
)


def register_template_commands() -> None:
    hypervisor = Param("hypervisor", description="The hypervisor (KVM)")
    for command in (
        Command(
            "listTemplates",
            list_templates,
            (Param("templatefilter", required=True, description="featured, self, ..."),)
            + LISTING_PARAMS,
            "List all public, private, and privileged templates",
            entity="template",
            fields=FIELDS,
        ),
        Command(
            "listIsos",
            list_isos,
            (Param("isofilter", description="featured, self, ... (default executable)"),)
            + LISTING_PARAMS,
            "Lists all available ISO files",
            entity="iso",
            fields=FIELDS,
        ),
        Command(
            "registerTemplate",
            register_template,
            (
                Param("format", required=True, description="QCOW2, RAW, VHD or VMDK"),
                Param("hypervisor", required=True, description="The hypervisor (KVM)"),
                *REGISTRATION_PARAMS,
            ),
            "Registers an existing template into the CloudStack cloud",
            entity="template",
            fields=FIELDS,
        ),
        Command(
            "registerIso",
            register_iso,
            (*REGISTRATION_PARAMS, Param("bootable", "boolean", description="Ignored")),
            "Registers an existing ISO into the CloudStack cloud",
            entity="iso",
            fields=FIELDS,
        ),
        Command(
            "updateTemplate",
            update_template,
            UPDATE_PARAMS,
            "Updates attributes of a template",
            fields=FIELDS,
        ),
        Command("updateIso", update_iso, UPDATE_PARAMS, "Updates an ISO file", fields=FIELDS),
        Command(
            "deleteTemplate",
            delete_template,
            DELETE_PARAMS,
            "Deletes a template from the system",
            is_async=True,
            fields=FIELDS,
        ),
        Command(
            "deleteIso",
            delete_iso,
            DELETE_PARAMS[:2],
            "Deletes an ISO file",
            is_async=True,
            fields=FIELDS,
        ),
        Command(
            "updateTemplatePermissions",
            update_template_permissions,
            PERMISSION_PARAMS,
            "Updates a template's launch permissions",
            fields={**FIELDS, "template": "id"},
        ),
        Command(
            "updateIsoPermissions",
            update_iso_permissions,
            PERMISSION_PARAMS,
            "Updates an ISO's launch permissions",
            fields={**FIELDS, "template": "id"},
        ),
        Command(
            "listTemplatePermissions",
            list_template_permissions,
            (Param("id", "uuid", required=True, description="The ID of the template"),),
            "List a template's launch permissions",
        ),
        Command(
            "listIsoPermissions",
            list_iso_permissions,
            (Param("id", "uuid", required=True, description="The ID of the ISO"),),
            "List an ISO's launch permissions",
        ),
        Command(
            "copyTemplate",
            copy_template,
            COPY_PARAMS,
            "Copies a template to other zones (their stores download it)",
            is_async=True,
            fields={**FIELDS, "zones": "destzoneid"},
        ),
        Command(
            "copyIso",
            copy_iso,
            COPY_PARAMS,
            "Copies an ISO to other zones",
            is_async=True,
            fields={**FIELDS, "zones": "destzoneid"},
        ),
        Command(
            "extractTemplate",
            extract_template,
            EXTRACT_PARAMS,
            "Extracts a template: a signed, time-limited URL to download it from",
            is_async=True,
            fields={**FIELDS, "zone": "zoneid"},
        ),
        Command(
            "extractIso",
            extract_iso,
            EXTRACT_PARAMS,
            "Extracts an ISO: a signed, time-limited URL to download it from",
            is_async=True,
            fields={**FIELDS, "zone": "zoneid"},
        ),
        Command(
            "getUploadParamsForTemplate",
            get_upload_params,
            (
                Param("name", required=True, description="The name of the template"),
                Param("displaytext", length=4096, description="The display text"),
                Param("format", required=True, description="QCOW2, RAW, VHD or VMDK"),
                hypervisor,
                Param("zoneid", "uuid", required=True, description="The zone"),
                Param("ostypeid", "uuid", description="The OS type"),
                Param("checksum", length=160, description="{ALGORITHM}hex digest"),
                Param("ispublic", "boolean", description="Usable by every account"),
                Param("size", "long", description="Bytes to be uploaded (charged now)"),
            ),
            "Upload a template from the local machine: the POST URL and its signature",
            fields=FIELDS,
        ),
    ):
        register(command)
    register_resolver("deleteTemplate", deleted)
    register_resolver("deleteIso", deleted)
    register_resolver("copyTemplate", copied)
    register_resolver("copyIso", copied)
    register_resolver("extractTemplate", extracted)
    register_resolver("extractIso", extracted)
