"""Read queries shared by the API, admin and commands. Each returns a ready-to-use queryset."""

import functools
import os
from collections.abc import Collection

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet, Sum

from .choices import DownloadState, StoreRefState, TemplateFilter, TemplateState
from .copy_status import filter_by_status
from .errors import NoAccount
from .models import Account, Event, ImageStore, Template, TemplateDetail, TemplateStoreRef, Zone
from .references import with_reference_count


def account_ids_of(user: AbstractBaseUser) -> list[int]:
    """The accounts `user` is a member of (the membership rows alone: no join), in one fixed
    statement: every listing and secrets check asks it, and building the queryset cost more
    than running it."""
    with connection.cursor() as cursor:
        cursor.execute(_account_ids_sql(), [user.pk])
        return [account_id for (account_id,) in cursor.fetchall()]


@functools.cache
def _account_ids_sql() -> str:
    through = Account.members.through._meta
    q = connection.ops.quote_name
    account = q(through.get_field("account").column)
    user = q(through.get_field("user").column)
    return f"SELECT {account} FROM {q(through.db_table)} WHERE {user} = %s"


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


def _own(user: AbstractBaseUser, member_of: Collection[int] | None) -> Q:
    if member_of is None:
        return Q(_member_of(user, "account_id"))
    return Q(account_id__in=member_of)


def _shared(user: AbstractBaseUser, member_of: Collection[int] | None) -> Q:
    if member_of is None:
        return Q(_shared_with(user))
    shared = Template.shared_with.through.objects.filter(
        template_id=OuterRef("pk"), account_id__in=member_of
    )
    return Q(Exists(shared))


def visible_to(user: AbstractBaseUser, *, member_of: Collection[int] | None = None) -> Q:
    """The one rule of who may see (and deploy) a template: public ones, the own account's,
    and those shared with the user's account. Staff see everything (callers check).

    `member_of`: the user's account ids (account_ids_of), when the caller has read them
    already: the rule then compares ids instead of joining the membership rows in every
    subquery (the listing, whose statement repeats the rule four times).
    """
    return Q(is_public=True) | _own(user, member_of) | _shared(user, member_of)


def usable_by_account(account_id: int) -> Q:
    """The same rule for an account (a VM's, a pool's): public, its own, shared with it."""
    shared = Template.shared_with.through.objects.filter(
        template_id=OuterRef("pk"), account_id=account_id
    )
    return Q(is_public=True) | Q(account_id=account_id) | Q(Exists(shared))


def templates_visible_to(user: AbstractBaseUser) -> QuerySet[Template]:
    """Everything this user may see, in any state."""
    queryset = Template.objects.all()
    if user.is_staff:
        return queryset
    return queryset.filter(visible_to(user))


def _apply_template_filter(
    queryset: QuerySet[Template],
    user: AbstractBaseUser,
    template_filter: str,
    member_of: Collection[int] | None = None,
) -> QuerySet[Template]:
    own = _own(user, member_of)
    if template_filter == TemplateFilter.FEATURED:
        return queryset.filter(is_public=True, is_featured=True)
    if template_filter in (TemplateFilter.SELF, TemplateFilter.SELFEXECUTABLE):
        return queryset.filter(own)
    if template_filter == TemplateFilter.SHAREDEXECUTABLE:
        return queryset.filter(_shared(user, member_of)).exclude(own)
    if template_filter == TemplateFilter.COMMUNITY:
        return queryset.filter(is_public=True, is_featured=False)
    if template_filter == TemplateFilter.ALL and user.is_staff:
        return queryset
    return queryset.filter(visible_to(user, member_of=member_of))


def template_list(
    *,
    user: AbstractBaseUser,
    template_filter: str = TemplateFilter.EXECUTABLE,
    states: list[str] | None = None,
    member_of: Collection[int] | None = None,
) -> QuerySet[Template]:
    """The catalogue's listing: ACTIVE only unless staff asks for other states, every row the
    filter admits (versions_app narrows it to one row per lineage). `member_of`: the user's
    account ids if the caller read them (visible_to)."""
    states = listing_states(user, states)
    queryset = _apply_template_filter(
        Template.objects.filter(state__in=states), user, template_filter, member_of
    )
    return with_listing_relations(queryset)


def listing_states(user: AbstractBaseUser, states: list[str] | None) -> list[str]:
    """The states a listing shows: ACTIVE, unless staff asks for others."""
    return list(states) if (user.is_staff and states) else [TemplateState.ACTIVE]


def with_listing_relations(queryset: QuerySet[Template]) -> QuerySet[Template]:
    """What a listed template shows: its reference count, account, base, zones and details."""
    return (
        with_reference_count(queryset)
        .select_related("account", "base")
        .prefetch_related("zones", "details")
    )


def listing_relations(ids: list[int]) -> tuple[dict[int, list], dict[int, list]]:
    """Zones (uuids) and details (key/value dicts) of a page of templates, per template id:
    one fixed statement for the page (_listing_relations_sql). The listing's hot path:
    prefetch_related builds a related manager and a queryset per row and relation, which cost
    more than the page's SQL (docs/benchmarks.md), and a second statement was one more round
    trip per request."""
    zones: dict[int, list] = {pk: [] for pk in ids}
    details: dict[int, list] = {pk: [] for pk in ids}
    if ids:
        in_ids = ", ".join(["%s"] * len(ids))
        zone_uuid = Zone._meta.get_field("uuid").to_python  # SQLite stores it as text
        with connection.cursor() as cursor:
            cursor.execute(_listing_relations_sql().format(ids=in_ids), [*ids, *ids])
            for is_detail, template_id, first, second, _name, _id in cursor.fetchall():
                if is_detail:
                    details[template_id].append({"key": first, "value": second})
                else:
                    zones[template_id].append(zone_uuid(first))
    return zones, details


@functools.cache
def _listing_relations_sql() -> str:
    """A page's zones (by zone name), then its details (in creation order), `{ids}` to fill
    in twice: rows of (is_detail, template id, zone uuid or key, value)."""
    q = connection.ops.quote_name
    through = Template.zones.through._meta
    template_col = q(through.get_field("template").column)
    zone_col = q(through.get_field("zone").column)
    zone = Zone._meta
    detail = TemplateDetail._meta

    def col(meta, name):
        return q(meta.get_field(name).column)

    return (
        f"SELECT 0, t.{template_col}, CAST(z.{col(zone, 'uuid')} AS VARCHAR(36)), NULL, "
        f"z.{col(zone, 'name')}, 0 FROM {q(through.db_table)} t "
        f"JOIN {q(zone.db_table)} z ON z.{col(zone, 'id')} = t.{zone_col} "
        f"WHERE t.{template_col} IN ({{ids}}) "
        f"UNION ALL SELECT 1, d.{col(detail, 'template')}, d.{col(detail, 'key')}, "
        f"d.{col(detail, 'value')}, NULL, d.{col(detail, 'id')} FROM {q(detail.db_table)} d "
        f"WHERE d.{col(detail, 'template')} IN ({{ids}}) ORDER BY 1, 5, 6"
    )


def template_detail_queryset(*, user: AbstractBaseUser) -> QuerySet[Template]:
    """For retrieve and actions: any state, so owners can still see what holds an INACTIVE one."""
    copies = TemplateStoreRef.objects.select_related("store__zone")
    return (
        with_reference_count(templates_visible_to(user))
        .select_related("account", "base")
        .prefetch_related("zones", "details", Prefetch("store_refs", queryset=copies))
    )


def may_change_template(user: AbstractBaseUser, template: Template) -> bool:
    """Writes (edit, delete, permissions) belong to the owning account's members and staff;
    callers answer anyone else as if the template did not exist."""
    return user.is_staff or template.account.members.filter(pk=user.pk).exists()


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


# Store copies (staff: infrastructure) ------------------------------------------------------

STORE_COPY_FAILED = (
    DownloadState.DOWNLOAD_ERROR,
    DownloadState.ABANDONED,
    DownloadState.UPLOAD_ERROR,
)
STORE_COPY_IN_PROGRESS = (DownloadState.DOWNLOAD_IN_PROGRESS, DownloadState.UPLOAD_IN_PROGRESS)


def store_copies_list() -> QuerySet[TemplateStoreRef]:
    """Every copy on every image store (and BYPASSED rows), with its template, store and zone."""
    return TemplateStoreRef.objects.select_related("template", "store__zone").order_by("pk")


def store_copies_with_status(
    queryset: QuerySet[TemplateStoreRef], status: str
) -> QuerySet[TemplateStoreRef]:
    """Failed, in progress or stuck copies (templates_app.copy_status); the copies of removed
    templates are gone with them and never listed as failed or stuck."""
    return filter_by_status(
        queryset.exclude(state__in=[StoreRefState.DESTROYING, StoreRefState.DESTROYED]),
        status,
        field="download_state",
        failed=STORE_COPY_FAILED,
        in_progress=STORE_COPY_IN_PROGRESS,
    )


def disk_usage(path: str) -> tuple[int | None, int | None]:
    """(capacity, used) bytes of the file system holding `path` (statvfs), or (None, None)
    when this process cannot read it (a store mounted only on its storage workers)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    capacity = st.f_blocks * st.f_frsize
    return capacity, capacity - st.f_bfree * st.f_frsize


def stores_with_usage(queryset: QuerySet[ImageStore]) -> QuerySet[ImageStore]:
    """Annotate `stencil_bytes` (bytes of the copies on disk) and `template_count`."""
    on_disk = Q(template_refs__state__in=[StoreRefState.READY, StoreRefState.QUARANTINED])
    return queryset.annotate(
        stencil_bytes=Sum("template_refs__physical_size", filter=on_disk),
        template_count=Count("template_refs__template", filter=on_disk, distinct=True),
    )
