"""Reads about lineages: a base template (version 1) and its versions (2, 3, ...)."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce

from templates_app import selectors as catalogue
from templates_app.choices import TemplateFilter, TemplateState
from templates_app.models import Template


def lineage_root_id(template_id: int) -> int | None:
    """The id of the base template of the lineage `template_id` belongs to (None: unknown id)."""
    row = Template.objects.filter(pk=template_id).values_list("base_id", "pk").first()
    return None if row is None else row[0] or row[1]


def lineage_of(base_id: int) -> QuerySet[Template]:
    """Every template of a lineage, in any state, oldest version first."""
    return Template.objects.filter(Q(pk=base_id) | Q(base_id=base_id)).order_by("version_number")


def newer_version_exists(states: list[str], user: AbstractBaseUser | None = None) -> Exists:
    """For the outer template: its lineage has a higher-numbered version in one of `states`
    (with `user`, one that user may see: another account's private version hides nothing).

    Anything numbered above a template is a version (the base is 1), so the lineage test is
    `base_id = COALESCE(outer.base_id, outer.id)`: one probe of the (base, version_number)
    unique index per row, no query per row.
    """
    newer = Template.objects.filter(
        base_id=Coalesce(OuterRef("base_id"), OuterRef("pk")),
        version_number__gt=OuterRef("version_number"),
        state__in=states,
    )
    if user is not None and not user.is_staff:
        newer = newer.filter(catalogue.visible_to(user))
    return Exists(newer)


def template_list(
    *,
    user: AbstractBaseUser,
    template_filter: str = TemplateFilter.EXECUTABLE,
    states: list[str] | None = None,
    all_versions: bool = False,
) -> QuerySet[Template]:
    """The template listing: one row per lineage, its newest version in the listed states
    (ACTIVE: what 'latest' deploys), unless `all_versions`. Which version is newest does not
    depend on the caller's filters."""
    queryset = catalogue.template_list(user=user, template_filter=template_filter, states=states)
    if all_versions:
        return queryset
    return queryset.exclude(newer_version_exists(catalogue.listing_states(user, states), user))


def template_versions_list(*, user: AbstractBaseUser, template: Template) -> QuerySet[Template]:
    """The lineage of `template` (base first, any state): the rows this user may see."""
    lineage = lineage_of(template.lineage_id).values("pk")
    visible = catalogue.templates_visible_to(user).filter(pk__in=lineage)
    return catalogue.with_listing_relations(visible).order_by("version_number")


def latest_version(base_id: int, *, account_id: int | None = None) -> Template | None:
    """'latest': the newest ACTIVE template of the lineage (the base included), or None. With
    `account_id`, the newest one that account may use: 'latest' never reaches a version that
    is private to another account.

    A version's id works too: it stands for its lineage.
    """
    root_id = lineage_root_id(base_id)
    if root_id is None:
        return None
    lineage = lineage_of(root_id)
    if account_id is not None:
        lineage = lineage.filter(catalogue.usable_by_account(account_id))
    return (
        lineage.filter(state=TemplateState.ACTIVE)
        .select_related("base", "account")
        .order_by("-version_number")
        .first()
    )
