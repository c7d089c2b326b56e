"""The live references compute holds on templates, registered with the catalogue's registry
(templates_app.references) in AgentsAppConfig.ready().

- "vm": a VM that is not EXPUNGED (a DESTROYED VM can be recovered, so it still counts);
- "pinned_pool_copy": a copy pre-populated on a primary pool, until it is unpinned;
- "vm_pool": a VM pool built on the template, and for a pool following 'latest' the newest
  version of its lineage that is not REMOVED (what its VMs are rebuilt onto).
"""

from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce
from django.urls import reverse

from templates_app.choices import TemplateState
from templates_app.models import Template
from templates_app.references import ReferenceProvider, register_reference

from .choices import LATEST_CHANNEL, VmState
from .models import TemplatePoolRef, VirtualMachine, VmPool


def live_vms() -> QuerySet[VirtualMachine]:
    return VirtualMachine.objects.filter(template_id=OuterRef("pk")).exclude(state=VmState.EXPUNGED)


def destroyed_vms() -> QuerySet[VirtualMachine]:
    """Live VMs that are DESTROYED: recoverable, so they hold the template until expunged."""
    return VirtualMachine.objects.filter(template_id=OuterRef("pk"), state=VmState.DESTROYED)


def pinned_copies() -> QuerySet[TemplatePoolRef]:
    return TemplatePoolRef.objects.filter(template_id=OuterRef("pk"), pinned=True)


def _outer_is_newest_kept_version() -> Q:
    """No version above the outer template in its lineage that is not REMOVED."""
    newer = Template.objects.filter(
        base_id=Coalesce(OuterRef(OuterRef("base_id")), OuterRef(OuterRef("pk"))),
        version_number__gt=OuterRef(OuterRef("version_number")),
    ).exclude(state=TemplateState.REMOVED)
    return ~Q(Exists(newer))


def vm_pools_holding() -> QuerySet[VmPool]:
    follows_outer_lineage = (
        Q(follow_channel=LATEST_CHANNEL)
        & Q(lineage=Coalesce(OuterRef("base_id"), OuterRef("pk")))
        & _outer_is_newest_kept_version()
    )
    return VmPool.objects.annotate(
        lineage=Coalesce(F("template__base_id"), F("template_id"))
    ).filter(Q(template_id=OuterRef("pk")) | follows_outer_lineage)


def _vm_rows(template: Template) -> list[dict]:
    vms = (
        VirtualMachine.objects.filter(template=template)
        .exclude(state=VmState.EXPUNGED)
        .select_related("account", "zone")
        .order_by("created_at", "pk")
    )
    return [
        {
            "kind": "vm",
            "account_id": vm.account_id,
            "id": vm.uuid,
            "name": vm.name,
            "state": vm.state,
            "account": vm.account.name,
            "zone": vm.zone.name,
            "admin_url": reverse("admin:agents_app_virtualmachine_change", args=[vm.pk]),
        }
        for vm in vms
    ]


def _pinned_rows(template: Template) -> list[dict]:
    copies = (
        TemplatePoolRef.objects.filter(template=template, pinned=True)
        .select_related("pool__zone")
        .order_by("pk")
    )
    return [
        {
            "kind": "pinned_pool_copy",
            "account_id": None,  # an operator's pin: infrastructure
            "id": copy.pool.uuid,
            "name": copy.pool.name,
            "state": copy.state,
            "account": "",
            "zone": copy.pool.zone.name,
            "admin_url": reverse("admin:agents_app_templatepoolref_change", args=[copy.pk]),
        }
        for copy in copies
    ]


def _pool_following(pool: VmPool) -> str:
    if pool.use_latest_template_version:
        return "LATEST"
    return f"FOLLOWS_{pool.follow_channel.upper()}" if pool.follow_channel else "PINNED_VERSION"


def _vm_pool_rows(template: Template) -> list[dict]:
    holds = Q(template=template)
    newer = Template.objects.filter(
        base_id=template.lineage_id, version_number__gt=template.version_number
    ).exclude(state=TemplateState.REMOVED)
    if not newer.exists():
        lineage = Template.objects.filter(
            Q(pk=template.lineage_id) | Q(base_id=template.lineage_id)
        )
        holds |= Q(follow_channel=LATEST_CHANNEL, template__in=lineage)
    pools = VmPool.objects.filter(holds).select_related("account", "zone")
    return [
        {
            "kind": "vm_pool",
            "account_id": pool.account_id,
            "id": pool.uuid,
            "name": pool.name,
            "state": _pool_following(pool),
            "account": pool.account.name,
            "zone": pool.zone.name,
            "admin_url": reverse("admin:agents_app_vmpool_change", args=[pool.pk]),
        }
        for pool in pools.order_by("pk")
    ]


def register_compute_references() -> None:
    register_reference(
        ReferenceProvider(
            "vm", "VM", live_vms, _vm_rows, details={"destroyed_vm": ("destroyed", destroyed_vms)}
        )
    )
    register_reference(
        ReferenceProvider("pinned_pool_copy", "pinned pool copy", pinned_copies, _pinned_rows)
    )
    register_reference(ReferenceProvider("vm_pool", "VM pool", vm_pools_holding, _vm_pool_rows))
