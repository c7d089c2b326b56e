"""The console's dashboard (the admin index): a few aggregate queries over every layer.

Reads only (a selectors module); agents_app is the top layer, so it may read the catalogue's
and the agents' tables alike. A constant number of queries whatever the number of templates,
copies, hosts or stores (tests/agents_app/test_dashboard.py asserts it); the disk figures of
image stores come from statvfs of their paths, not from the database.
"""

from dataclasses import dataclass

from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.http import HttpRequest
from django.urls import reverse

from templates_app.choices import DownloadState, StoreRefState, TemplateState
from templates_app.copy_status import CopyStatus
from templates_app.models import Event, ImageStore, Template, TemplateStoreRef
from templates_app.selectors import disk_usage, store_copies_with_status, stores_with_usage

from .choices import HostState, PoolCopyState
from .models import Host, PrimaryPool, TemplatePoolRef
from .selectors import pool_copies_with_status

IN_FLIGHT_SHOWN = 10
EVENTS_SHOWN = 10
# Copies whose bytes are on disk (READY or kept for inspection), for "bytes stored".
ON_DISK = (StoreRefState.READY, StoreRefState.QUARANTINED)


@dataclass(frozen=True)
class Usage:
    """One bar: a store or pool, its capacity and what is used (None: unknown)."""

    name: str
    zone: str
    url: str
    capacity: int | None
    used: int | None
    stencil_bytes: int
    note: str = ""

    @property
    def percent(self) -> int:
        if not self.capacity or self.used is None:
            return 0
        return min(100, round(self.used * 100 / self.capacity))


def _admin(model: str, query: str = "") -> str:
    url = reverse(f"admin:{model}_changelist")
    return f"{url}?{query}" if query else url


def _copy_counts(with_status, queryset, model: str) -> list[dict]:
    return [
        {
            "status": status.label,
            "count": with_status(queryset, status.value).count(),
            "url": _admin(model, f"status={status.value}"),
        }
        for status in CopyStatus
    ]


def dashboard(request: HttpRequest | None = None) -> dict:
    """Everything the dashboard shows, as plain values for the template."""
    ready_copy = TemplateStoreRef.objects.filter(
        template_id=OuterRef("pk"),
        state=StoreRefState.READY,
        download_state__in=[DownloadState.DOWNLOADED, DownloadState.UPLOADED],
    )
    by_state = dict(
        Template.objects.order_by()
        .values_list("state")
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    )
    readiness = Template.objects.filter(state=TemplateState.ACTIVE).aggregate(
        ready=Count("pk", filter=Q(Exists(ready_copy))),
        not_ready=Count("pk", filter=~Q(Exists(ready_copy))),
    )
    templates = [
        {
            "label": state.label,
            "state": state.value,
            "count": by_state.get(state.value, 0),
            "url": _admin("templates_app_template", f"state={state.value}"),
        }
        for state in TemplateState
    ]

    store_downloading = list(
        store_copies_with_status(TemplateStoreRef.objects.all(), CopyStatus.IN_PROGRESS)
        .select_related("template", "store")
        .order_by("-updated_at")[:IN_FLIGHT_SHOWN]
    )
    pool_downloading = list(
        pool_copies_with_status(TemplatePoolRef.objects.all(), CopyStatus.IN_PROGRESS)
        .select_related("template", "pool")
        .order_by("-updated_at")[:IN_FLIGHT_SHOWN]
    )

    hosts = list(Host.objects.select_related("zone").order_by("zone__name", "name"))
    host_counts = {state.value: 0 for state in HostState}
    for host in hosts:
        host_counts[host.state] = host_counts.get(host.state, 0) + 1

    stores = []
    for store in stores_with_usage(ImageStore.objects.select_related("zone")).order_by(
        "zone__name", "name"
    ):
        capacity, used = disk_usage(store.path)
        stores.append(
            Usage(
                name=store.name,
                zone=store.zone.name,
                url=reverse("admin:templates_app_imagestore_change", args=[store.pk]),
                capacity=capacity if capacity is not None else store.capacity_bytes,
                used=used,
                stencil_bytes=store.stencil_bytes or 0,
                note="" if capacity is not None else "path not readable here",
            )
        )

    pools = [
        Usage(
            name=pool.name,
            zone=pool.zone.name,
            url=reverse("admin:agents_app_primarypool_change", args=[pool.pk]),
            capacity=pool.capacity_bytes,
            # libvirt's allocation, as the pool's agent last reported it.
            used=pool.used_bytes if pool.capacity_bytes else None,
            stencil_bytes=pool.stencil_bytes or 0,
            note="" if pool.capacity_bytes else "no report from libvirt yet",
        )
        for pool in PrimaryPool.objects.select_related("zone")
        .annotate(
            stencil_bytes=Sum(
                "template_refs__physical_size",
                filter=Q(template_refs__state=PoolCopyState.DOWNLOADED),
            )
        )
        .order_by("zone__name", "name")
    ]

    per_zone = list(
        TemplateStoreRef.objects.filter(state__in=ON_DISK, store__isnull=False)
        .order_by()
        .values("store__zone__name")
        .annotate(bytes=Sum("physical_size"), copies=Count("pk"))
        .order_by("store__zone__name")
    )
    largest = max([row["bytes"] or 0 for row in per_zone], default=0)
    zones = [
        {
            "zone": row["store__zone__name"],
            "bytes": row["bytes"] or 0,
            "copies": row["copies"],
            "percent": round((row["bytes"] or 0) * 100 / largest) if largest else 0,
        }
        for row in per_zone
    ]

    return {
        "templates": templates,
        "readiness": readiness,
        "store_copies": _copy_counts(
            store_copies_with_status,
            TemplateStoreRef.objects.all(),
            "templates_app_templatestoreref",
        ),
        "pool_copies": _copy_counts(
            pool_copies_with_status, TemplatePoolRef.objects.all(), "agents_app_templatepoolref"
        ),
        "store_downloading": store_downloading,
        "pool_downloading": pool_downloading,
        "hosts": hosts,
        "host_counts": [
            {
                "label": state.label,
                "state": state.value,
                "count": host_counts.get(state.value, 0),
                "url": _admin("agents_app_host", f"state__exact={state.value}"),
            }
            for state in HostState
        ],
        "stores": stores,
        "pools": pools,
        "zones": zones,
        "events": list(
            Event.objects.select_related("content_type").order_by("-created_at")[:EVENTS_SHOWN]
        ),
    }


def dashboard_callback(request: HttpRequest, context: dict) -> dict:
    """UNFOLD["DASHBOARD_CALLBACK"]: the figures, for staff who may see the infrastructure."""
    if request.user.is_staff:
        context["dashboard"] = dashboard(request)
    return context
