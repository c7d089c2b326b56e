"""The transport's own commands (listApis, queryAsyncJobResult) and the catalogue's
infrastructure listings (listZones, listHypervisors, listOsTypes)."""

from templates_app import selectors
from templates_app.choices import Hypervisor

from .jobs import job_refresh, job_response
from .models import AsyncJob
from .ostypes import os_type_rows
from .registry import LIST_PARAMS, Call, Command, Param, all_commands, register
from .responses import CLOUDSTACK_VERSION, list_response, page_bounds, paged


def list_apis(call: Call, name: str | None = None) -> dict:
    commands = [
        c for c in all_commands(call.user) if name is None or c.name.lower() == name.lower()
    ]
    if name is not None and not commands:
        raise call.invalid("name", name)
    rows = [
        {
            "name": command.name,
            "description": command.description,
            "isasync": command.is_async,
            "related": "",
            "since": "4.0",
            "type": "",
            "params": [
                {
                    "name": param.name,
                    "description": param.description,
                    "type": param.type,
                    "required": param.required,
                    "length": param.length,
                    "since": "4.0",
                    "related": "",
                }
                for param in command.params
            ],
            "response": [],
        }
        for command in commands
    ]
    return list_response("api", rows)


def query_async_job_result(call: Call, jobid) -> dict:
    """A job is seen by the user who started it (staff: any); another's is unknown."""
    jobs = AsyncJob.objects.select_related("content_type")
    if not call.user.is_staff:
        jobs = jobs.filter(user=call.user)
    job = jobs.filter(uuid=jobid).first()
    if job is None:
        raise call.invalid("jobid", jobid)
    return job_response(job_refresh(job))


def list_async_jobs(call: Call, keyword=None, page=None, pagesize=None) -> dict:
    """The caller's jobs (staff: everyone's), newest first; a pending one is brought up to date
    as queryAsyncJobResult would (only those of the page: a finished job is read as stored)."""
    jobs = AsyncJob.objects.select_related("content_type")
    if not call.user.is_staff:
        jobs = jobs.filter(user=call.user)
    if keyword:
        jobs = jobs.filter(command__icontains=keyword)
    offset, limit = page_bounds(page, pagesize)
    count = jobs.count()
    rows = [job_response(job_refresh(job)) for job in jobs[offset : offset + limit]]
    return list_response("asyncjobs", rows, count=count)


def list_capabilities(call: Call) -> dict:
    """CloudStack's CapabilitiesResponse, as clients read it (cloudmonkey, the UI): what a
    user may do here. No security groups, projects or data disks."""
    return {
        "capability": {
            "cloudstackversion": CLOUDSTACK_VERSION,
            "securitygroupsenabled": False,
            "dynamicrolesenabled": False,
            "userpublictemplateenabled": True,
            "supportELB": "false",
            "projectinviterequired": False,
            "allowusercreateprojects": False,
            "customdiskofferingminsize": 0,
            "customdiskofferingmaxsize": 0,
            "regionsecondaryenabled": False,
            "kvmsnapshotenabled": False,
            "allowuserviewdestroyedvm": True,
            "allowuserexpungerecovervm": True,
            "apilimitinterval": 0,
            "apilimitmax": 0,
            "defaultuipagesize": DEFAULT_UI_PAGE_SIZE,
        }
    }


def zone_row(zone) -> dict:
    return {
        "id": str(zone.uuid),
        "name": zone.name,
        "description": zone.description,
        "allocationstate": "Enabled",
        "networktype": "Basic",
        "localstorageenabled": False,
        "securitygroupsenabled": False,
        "zonetoken": "",
        "dhcpprovider": "",
    }


def list_zones(
    call: Call, id=None, name=None, keyword=None, page=None, pagesize=None, available=None
) -> dict:
    zones = selectors.zones_list().order_by("name")
    if id is not None:
        zones = zones.filter(uuid=id)
    if name is not None:
        zones = zones.filter(name=name)
    if keyword:
        zones = zones.filter(name__icontains=keyword)
    count = zones.count()
    return list_response("zone", [zone_row(z) for z in paged(zones, page, pagesize)], count=count)


def list_hypervisors(call: Call, zoneid=None) -> dict:
    return list_response("hypervisor", [{"name": value} for value in Hypervisor.values])


def list_os_types(call: Call, id=None, description=None, keyword=None, page=None, pagesize=None):
    rows = os_type_rows()
    if id is not None:
        rows = [row for row in rows if row["id"] == str(id)]
    if description is not None:
        rows = [row for row in rows if row["description"] == description]
    if keyword:
        rows = [row for row in rows if keyword.lower() in row["description"].lower()]
    return list_response("ostype", paged(rows, page, pagesize), count=len(rows))


DEFAULT_UI_PAGE_SIZE = 20


def register_transport_commands() -> None:
    for command in (
        Command(
            "listCapabilities",
            list_capabilities,
            (),
            "Lists capabilities",
        ),
        Command(
            "listAsyncJobs",
            list_async_jobs,
            LIST_PARAMS,
            "Lists all pending and finished asynchronous jobs of the caller",
            entity="asyncjobs",
        ),
        Command(
            "listApis",
            list_apis,
            (Param("name", description="API name"),),
            "Lists all available APIs and their parameters",
            entity="api",
        ),
        Command(
            "queryAsyncJobResult",
            query_async_job_result,
            (Param("jobid", "uuid", required=True, description="The ID of the asynchronous job"),),
            "Retrieves the current status of an asynchronous job",
        ),
        Command(
            "listZones",
            list_zones,
            (
                Param("id", "uuid", description="The ID of the zone"),
                Param("name", description="The name of the zone"),
                Param("available", "boolean", description="Ignored: every zone is available"),
                *LIST_PARAMS,
            ),
            "Lists zones",
            entity="zone",
        ),
        Command(
            "listHypervisors",
            list_hypervisors,
            (Param("zoneid", "uuid", description="The zone id for listing hypervisors"),),
            "Lists hypervisors",
            entity="hypervisor",
        ),
        Command(
            "listOsTypes",
            list_os_types,
            (
                Param("id", "uuid", description="List by OS type id"),
                Param("description", description="List by OS type description"),
                *LIST_PARAMS,
            ),
            "Lists all supported OS types for this cloud",
            entity="ostype",
        ),
    ):
        register(command)
