"""Read queries shared by the API, admin and commands. Each returns a ready-to-use queryset."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, IntegerField, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from agents_app.choices import VmState
from agents_app.models import TemplatePoolRef, VirtualMachine
from versions_app.selectors import lineage_of, newer_version_exists

from .choices import TemplateFilter, TemplateState
from .errors import NoAccount
from .models import Account, Event, ImageStore, Template, TemplateStoreRef, Zone


def account_ids_of(user: AbstractBaseUser) -> list[int]:
    return list(Account.objects.filter(members=user).values_list("pk", flat=True))


def account_of(user: AbstractBaseUser) -> Account:
    """The account a user acts for (the first one they belong to)."""
    account = Account.objects.filter(members=user).order_by("pk").first()
    if account is None:
        raise NoAccount(f"user '{user.get_username()}' belongs to no account")
    return account


def _member_of(user: AbstractBaseUser, account_field: str) -> Exists:
    """`user` is a member of the account in `account_field` (a subquery: no extra round trip)."""
    return Exists(
        Account.members.through.objects.filter(account_id=OuterRef(account_field), user_id=user.pk)
    )


def _shared_with(user: AbstractBaseUser) -> Exists:
    return Exists(
        Template.shared_with.through.objects.filter(
            template_id=OuterRef("pk"),
            account__members=user,
        )
    )


def live_vm_references(template_ref: str = "pk") -> QuerySet[VirtualMachine]:
    """VMs that still need the template's bytes: every VM that is not EXPUNGED."""
    return VirtualMachine.objects.filter(template_id=OuterRef(template_ref)).exclude(
        state=VmState.EXPUNGED
    )


def pinned_pool_copies(template_ref: str = "pk") -> QuerySet[TemplatePoolRef]:
    """Pre-populated copies on primary pools: operators keep these until they unpin them."""
    return TemplatePoolRef.objects.filter(template_id=OuterRef(template_ref), pinned=True)


def has_live_reference() -> Q:
    """The one place that says what a live reference is: a VM not EXPUNGED, or a pinned copy."""
    return Q(Exists(live_vm_references())) | Q(Exists(pinned_pool_copies()))


def _count_of(queryset: QuerySet) -> Coalesce:
    counts = queryset.order_by().values("template_id").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counts, output_field=IntegerField()), 0)


def with_reference_count(queryset: QuerySet[Template]) -> QuerySet[Template]:
    return queryset.annotate(
        references=_count_of(live_vm_references()) + _count_of(pinned_pool_copies())
    )


def templates_visible_to(user: AbstractBaseUser) -> QuerySet[Template]:
    """Everything this user may see, in any state: public, own account's, shared with them."""
    queryset = Template.objects.all()
    if user.is_staff:
        return queryset
    return queryset.filter(Q(is_public=True) | _member_of(user, "account_id") | _shared_with(user))


def _apply_template_filter(
    queryset: QuerySet[Template], user: AbstractBaseUser, template_filter: str
) -> QuerySet[Template]:
    own = _member_of(user, "account_id")
    if template_filter == TemplateFilter.FEATURED:
        return queryset.filter(is_public=True, is_featured=True)
    if template_filter in (TemplateFilter.SELF, TemplateFilter.SELFEXECUTABLE):
        return queryset.filter(own)
    if template_filter == TemplateFilter.SHAREDEXECUTABLE:
        return queryset.filter(_shared_with(user)).exclude(own)
    if template_filter == TemplateFilter.COMMUNITY:
        return queryset.filter(is_public=True, is_featured=False)
    if template_filter == TemplateFilter.ALL and user.is_staff:
        return queryset
    return queryset.filter(Q(is_public=True) | own | _shared_with(user))


def template_list(
    *,
    user: AbstractBaseUser,
    template_filter: str = TemplateFilter.EXECUTABLE,
    states: list[str] | None = None,
    all_versions: bool = False,
) -> QuerySet[Template]:
    """The template listing: ACTIVE only unless staff asks for other states.

    One row per lineage, its newest version in those states (ACTIVE: what 'latest' deploys),
    unless `all_versions`. Which version is newest does not depend on the caller's filters.
    """
    if not (user.is_staff and states):
        states = [TemplateState.ACTIVE]
    queryset = Template.objects.filter(state__in=states)
    if not all_versions:
        queryset = queryset.exclude(newer_version_exists(states))
    queryset = _apply_template_filter(queryset, user, template_filter)
    return (
        with_reference_count(queryset)
        .select_related("account", "base")
        .prefetch_related("zones", "details")
    )


def template_versions_list(*, user: AbstractBaseUser, template: Template) -> QuerySet[Template]:
    """The lineage of `template` (base first, any state): the rows this user may see."""
    lineage = lineage_of(template.lineage_id).values("pk")
    return (
        with_reference_count(templates_visible_to(user).filter(pk__in=lineage))
        .select_related("account", "base")
        .prefetch_related("zones", "details")
        .order_by("version_number")
    )


def template_detail_queryset(*, user: AbstractBaseUser) -> QuerySet[Template]:
    """For retrieve and actions: any state, so owners can still see what holds an INACTIVE one."""
    copies = TemplateStoreRef.objects.select_related("store__zone")
    return (
        with_reference_count(templates_visible_to(user))
        .select_related("account", "base")
        .prefetch_related("zones", "details", Prefetch("store_refs", queryset=copies))
    )


def template_references(*, template: Template) -> QuerySet[VirtualMachine]:
    """The live references that keep a template's bytes: listed on its page and in the API."""
    return (
        VirtualMachine.objects.filter(template=template)
        .exclude(state=VmState.EXPUNGED)
        .select_related("account", "zone")
        .order_by("created_at", "pk")
    )


def template_pinned_copies(*, template: Template) -> QuerySet[TemplatePoolRef]:
    return (
        TemplatePoolRef.objects.filter(template=template, pinned=True)
        .select_related("pool__zone")
        .order_by("pk")
    )


def template_in_zone(template: Template, zone: Zone) -> bool:
    return template.cross_zones or template.zones.filter(pk=zone.pk).exists()


def zones_list() -> QuerySet[Zone]:
    return Zone.objects.all()


def image_stores_list() -> QuerySet[ImageStore]:
    return ImageStore.objects.select_related("zone")


def accounts_list() -> QuerySet[Account]:
    return Account.objects.all()


def events_visible_to(user: AbstractBaseUser) -> QuerySet[Event]:
    queryset = Event.objects.select_related("content_type", "actor")
    if user.is_staff:
        return queryset
    return queryset.filter(_member_of(user, "account_id"))
