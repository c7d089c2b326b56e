"""CloudStack's TemplateResponse: one row per template and zone, as CloudStack lists them.
Secrets (URL query strings, header values) follow templates_app.secrets, as in the REST API."""

from collections.abc import Iterable

from django.db.models import Count, Prefetch, QuerySet

from templates_app import secrets, selectors
from templates_app.choices import DownloadState, StoreRefState, TemplateKind
from templates_app.cloudstack.ostypes import os_type_id
from templates_app.cloudstack.responses import cs_date, page_bounds
from templates_app.models import Template, TemplateStoreRef, Zone

DOWNLOAD_COMPLETE = "Download Complete"
IN_PROGRESS = (DownloadState.DOWNLOAD_IN_PROGRESS, DownloadState.UPLOAD_IN_PROGRESS)


def with_copies(queryset: QuerySet[Template]) -> QuerySet[Template]:
    """Each template's copies and their stores: a row's isready/size/status per zone (one
    query more, whatever the count)."""
    copies = TemplateStoreRef.objects.select_related("store").order_by("pk")
    return queryset.prefetch_related(Prefetch("store_refs", queryset=copies, to_attr="cs_copies"))


def _copies_in(template: Template, zone: Zone) -> list[TemplateStoreRef]:
    return [
        ref
        for ref in getattr(template, "cs_copies", template.store_refs.all())
        if ref.store is None or ref.store.zone_id == zone.pk
    ]


def _status(copies: list[TemplateStoreRef]) -> tuple[bool, int | None, int | None, str]:
    """(isready, size, physical size, status text) of a template in one zone."""
    ready = [ref for ref in copies if ref.state == StoreRefState.READY]
    if ready:
        return True, ready[0].size, ready[0].physical_size, DOWNLOAD_COMPLETE
    for ref in copies:
        if ref.download_state in IN_PROGRESS:
            return False, None, None, f"{ref.download_percent}% Downloaded"
    for ref in copies:
        if ref.error_text:
            return False, None, None, ref.error_text
    state = copies[0].get_download_state_display() if copies else "Not Downloaded"
    return False, None, None, state


def _details(template: Template, may_see_secrets: bool) -> dict[str, str]:
    details: dict[str, str] = {}
    for detail in template.details.all():
        value = detail.value
        if not may_see_secrets:
            value = secrets.public_detail_value(detail.key, value)
        details[detail.key] = f"{details[detail.key]}, {value}" if detail.key in details else value
    return details


def template_row(template: Template, zone: Zone, *, member_of: set[int], is_staff: bool) -> dict:
    may_see = secrets.may_see_secrets(
        is_staff=is_staff, member_of=member_of, account_id=template.account_id
    )
    ready, size, physical_size, status = _status(_copies_in(template, zone))
    row = {
        "id": str(template.uuid),
        "name": template.name,
        "displaytext": template.display_text,
        "format": template.format,
        "hypervisor": template.hypervisor,
        "ostypeid": os_type_id(template.os_type),
        "ostypename": template.os_type,
        "zoneid": str(zone.uuid),
        "zonename": zone.name,
        "isready": ready,
        "ispublic": template.is_public,
        "isfeatured": template.is_featured,
        "isextractable": False,
        "passwordenabled": False,
        "sshkeyenabled": False,
        "crossZones": template.cross_zones,
        "directdownload": template.direct_download,
        "checksum": template.checksum,
        "account": template.account.name,
        "accountid": str(template.account.uuid),
        "domain": "ROOT",
        "templatetype": "USER",
        "created": cs_date(template.created_at),
        "status": status,
        "state": template.get_state_display(),
        "url": template.url if may_see else secrets.public_url(template.url),
        "details": _details(template, may_see),
    }
    if template.kind == TemplateKind.ISO:
        row["bootable"] = True
    if size is not None:
        row["size"] = size
        row["physicalsize"] = physical_size
    if template.removed_at is not None:
        row["removed"] = cs_date(template.removed_at)
    return row


def template_rows(templates: Iterable[Template], *, user, zone: Zone | None = None) -> list[dict]:
    """One row per template and zone (a cross-zone template: every zone), `zone` only if given."""
    member_of = set(selectors.account_ids_of(user))
    every_zone: list[Zone] | None = None
    rows = []
    for template in templates:
        if template.cross_zones:
            if every_zone is None:
                every_zone = list(selectors.zones_list().order_by("name"))
            zones = every_zone
        else:
            zones = sorted(template.zones.all(), key=lambda z: z.name)
        for where in zones:
            if zone is None or where.pk == zone.pk:
                rows.append(
                    template_row(template, where, member_of=member_of, is_staff=user.is_staff)
                )
    return rows


def paged_template_rows(
    queryset: QuerySet[Template],
    *,
    user,
    zone: Zone | None,
    page: int | None,
    pagesize: int | None,
) -> tuple[list[dict], int]:
    """One page of `template_rows` and the total row count, without building the rows of the
    other pages: the ids, cross-zone flags and zone counts of the listing are read (two light
    queries), the templates that cover the page are picked, and only those are loaded."""
    offset, limit = page_bounds(page, pagesize)
    ordered = list(queryset.values_list("pk", "cross_zones"))
    if zone is not None:
        counts = dict.fromkeys((pk for pk, _ in ordered), 1)
    else:
        every_zone = selectors.zones_list().count()
        per_template = dict(
            # the ids, not the listing again as a subquery: its visibility test is the cost
            Template.zones.through.objects.filter(template_id__in=[pk for pk, _ in ordered])
            .values("template_id")
            .annotate(zones=Count("zone_id"))
            .values_list("template_id", "zones")
        )
        counts = {pk: every_zone if cross else per_template.get(pk, 0) for pk, cross in ordered}
    total = sum(counts.values())
    wanted, skip, position = [], 0, 0
    for pk, _ in ordered:
        rows_here = counts[pk]
        if rows_here and position + rows_here > offset and position < offset + limit:
            if not wanted:
                skip = offset - position
            wanted.append(pk)
        position += rows_here
        if position >= offset + limit:
            break
    if not wanted:
        return [], total
    by_id = {t.pk: t for t in with_copies(queryset.filter(pk__in=wanted))}
    rows = template_rows([by_id[pk] for pk in wanted if pk in by_id], user=user, zone=zone)
    return rows[max(skip, 0) : max(skip, 0) + limit], total
