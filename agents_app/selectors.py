"""Read queries of hosts, pools, pool copies and VMs, for the API, the admin and commands."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Exists, OuterRef, Prefetch, QuerySet

from templates_app.copy_status import filter_by_status
from templates_app.models import Account
from templates_app.selectors import templates_visible_to

from .choices import PoolCopyState
from .models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine


def vms_visible_to(user: AbstractBaseUser) -> QuerySet[VirtualMachine]:
    queryset = VirtualMachine.objects.select_related("template", "zone", "account", "host", "pool")
    if user.is_staff:
        return queryset
    membership = Account.members.through.objects.filter(
        account_id=OuterRef("account_id"), user_id=user.pk
    )
    return queryset.filter(Exists(membership))


def hosts_list() -> QuerySet[Host]:
    """Every host with its zone and the pools it reaches (two queries whatever the count)."""
    pools = PrimaryPool.objects.order_by("name")
    return Host.objects.select_related("zone").prefetch_related(Prefetch("pools", queryset=pools))


def primary_pools_list() -> QuerySet[PrimaryPool]:
    """Every primary pool with its zone and the hosts that reach it."""
    hosts = Host.objects.order_by("name")
    return PrimaryPool.objects.select_related("zone").prefetch_related(
        Prefetch("hosts", queryset=hosts)
    )


def pool_copies_visible_to(user: AbstractBaseUser) -> QuerySet[TemplatePoolRef]:
    """Copies on primary pools of the templates this user may see (staff: all of them)."""
    queryset = TemplatePoolRef.objects.select_related("template", "pool__zone")
    if user.is_staff:
        return queryset
    return queryset.filter(template__in=templates_visible_to(user).values("pk"))


def pool_copies_with_status(
    queryset: QuerySet[TemplatePoolRef], status: str
) -> QuerySet[TemplatePoolRef]:
    """Failed (DOWNLOAD_ERROR), in progress, or stuck copies (templates_app.copy_status)."""
    return filter_by_status(
        queryset,
        status,
        field="state",
        failed=[PoolCopyState.DOWNLOAD_ERROR],
        in_progress=[PoolCopyState.DOWNLOAD_IN_PROGRESS],
    )


def pool_copy_of(*, template_id: int, pool_id: int) -> TemplatePoolRef | None:
    """The template's copy on the pool, or None when there is no row for it."""
    return pool_copies_of_template(template_id=template_id).filter(pool_id=pool_id).first()


def pool_copies_of_template(*, template_id: int) -> QuerySet[TemplatePoolRef]:
    return TemplatePoolRef.objects.filter(template_id=template_id).select_related(
        "template", "pool__zone"
    )


def vm_pools_visible_to(user: AbstractBaseUser) -> QuerySet:
    """VM pools of the user's accounts (every pool for staff)."""
    from .models import VmPool

    queryset = VmPool.objects.select_related("template", "zone", "account")
    if user.is_staff:
        return queryset
    membership = Account.members.through.objects.filter(
        account_id=OuterRef("account_id"), user_id=user.pk
    )
    return queryset.filter(Exists(membership))
