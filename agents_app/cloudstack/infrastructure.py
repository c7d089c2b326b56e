"""Administrators' listings of compute infrastructure: listHosts and listStoragePools (the
same selectors as /api/v1/hosts/ and /api/v1/primary-pools/). Tenants never see hosts or
pools: to them these commands do not exist (432), as CloudStack's root-admin APIs."""

from templates_app.cloudstack.registry import LIST_PARAMS, Call, Command, Param, register
from templates_app.cloudstack.responses import cs_date, list_response, page_bounds

from .. import selectors
from ..choices import HostState

HOST_STATUS = {
    HostState.UP: "Up",
    HostState.DOWN: "Down",
    HostState.DISCONNECTED: "Disconnected",
    HostState.MAINTENANCE: "Up",
}


def host_row(host) -> dict:
    """CloudStack's HostResponse (a KVM routing host)."""
    return {
        "id": str(host.uuid),
        "name": host.name,
        "type": "Routing",
        "hypervisor": "KVM",
        "state": HOST_STATUS.get(host.state, host.get_state_display()),
        "resourcestate": "Maintenance" if host.state == HostState.MAINTENANCE else "Enabled",
        "ipaddress": host.address,
        "zoneid": str(host.zone.uuid),
        "zonename": host.zone.name,
        "created": cs_date(host.created_at),
        "lastpinged": cs_date(host.last_heartbeat_at),
    }


def pool_row(pool) -> dict:
    """CloudStack's StoragePoolResponse (a shared mount point the zone's hosts reach)."""
    return {
        "id": str(pool.uuid),
        "name": pool.name,
        "path": pool.path,
        "type": "Filesystem" if pool.pool_type == "dir" else pool.pool_type,
        "scope": "ZONE",
        "state": "Up",
        "hypervisor": "KVM",
        "zoneid": str(pool.zone.uuid),
        "zonename": pool.zone.name,
        "disksizetotal": pool.capacity_bytes,
        "disksizeused": pool.used_bytes,
        "created": cs_date(pool.created_at),
    }


def _page(call: Call, queryset, params: dict, row) -> tuple[list[dict], int]:
    if params.get("id"):
        queryset = queryset.filter(uuid=params["id"])
    if params.get("name"):
        queryset = queryset.filter(name=params["name"])
    if params.get("keyword"):
        queryset = queryset.filter(name__icontains=params["keyword"])
    if params.get("zoneid"):
        queryset = queryset.filter(zone__uuid=params["zoneid"])
    offset, limit = page_bounds(params.get("page"), params.get("pagesize"))
    queryset = queryset.order_by("name")
    return [row(item) for item in queryset[offset : offset + limit]], queryset.count()


def list_hosts(call: Call, type=None, state=None, **params) -> dict:
    hosts = selectors.hosts_list()
    if type is not None and type.lower() != "routing":
        return {}
    if state is not None:
        wanted = [key for key, value in HOST_STATUS.items() if value.lower() == state.lower()]
        hosts = hosts.filter(state__in=wanted)
    rows, count = _page(call, hosts, params, host_row)
    return list_response("host", rows, count=count)


def list_storage_pools(call: Call, **params) -> dict:
    rows, count = _page(call, selectors.primary_pools_list(), params, pool_row)
    return list_response("storagepool", rows, count=count)


COMMON = (
    Param("id", "uuid", description="The ID"),
    Param("name", description="The name"),
    Param("zoneid", "uuid", description="The zone"),
    *LIST_PARAMS,
)


def register_infrastructure_commands() -> None:
    register(
        Command(
            "listHosts",
            list_hosts,
            (
                *COMMON,
                Param("type", description="Routing (the only type here)"),
                Param("state", description="Up, Down, Disconnected"),
            ),
            "Lists hosts (administrators)",
            entity="host",
            staff_only=True,
        )
    )
    register(
        Command(
            "listStoragePools",
            list_storage_pools,
            COMMON,
            "Lists primary storage pools (administrators)",
            entity="storagepool",
            staff_only=True,
        )
    )
