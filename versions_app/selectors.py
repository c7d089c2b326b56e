"""Reads about lineages: a base template (version 1) and its versions (2, 3, ...)."""

from collections.abc import Collection

from django.contrib.auth.models import AbstractBaseUser
from django.contrib.contenttypes.models import ContentType
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.functions import Coalesce

from templates_app import selectors as catalogue
from templates_app.choices import TemplateFilter, TemplateState
from templates_app.models import Event, Template

from .channel_followers import channel_followers
from .models import BUILT_IN_CHANNELS, LATEST, STORED_BUILT_IN_CHANNELS, Channel


def lineage_root_id(template_id: int) -> int | None:
    """The id of the base template of the lineage `template_id` belongs to (None: unknown id)."""
    row = Template.objects.filter(pk=template_id).values_list("base_id", "pk").first()
    return None if row is None else row[0] or row[1]


def lineage_of(base_id: int) -> QuerySet[Template]:
    """Every template of a lineage, in any state, oldest version first."""
    return Template.objects.filter(Q(pk=base_id) | Q(base_id=base_id)).order_by("version_number")


def newer_version_exists(
    states: list[str],
    user: AbstractBaseUser | None = None,
    member_of: Collection[int] | None = None,
) -> Exists:
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
        newer = newer.filter(catalogue.visible_to(user, member_of=member_of))
    return Exists(newer)


def template_list(
    *,
    user: AbstractBaseUser,
    template_filter: str = TemplateFilter.EXECUTABLE,
    states: list[str] | None = None,
    all_versions: bool = False,
    member_of: Collection[int] | None = None,
) -> QuerySet[Template]:
    """The template listing: one row per lineage, its newest version in the listed states
    (ACTIVE: what 'latest' deploys), unless `all_versions`. Which version is newest does not
    depend on the caller's filters. `member_of`: the user's account ids if the caller read
    them (templates_app.selectors.visible_to)."""
    queryset = catalogue.template_list(
        user=user, template_filter=template_filter, states=states, member_of=member_of
    )
    if all_versions:
        return queryset
    states = catalogue.listing_states(user, states)
    return queryset.exclude(newer_version_exists(states, user, member_of))


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


# Channels --------------------------------------------------------------------------------------


def channel_version(base_id: int, name: str, *, account_id: int) -> Template | None:
    """What a follower of channel `name` of `base_id`'s lineage runs: for 'latest' the newest
    ACTIVE version `account_id` may use; for a stored channel its version, when it is ACTIVE and
    usable by that account. None: nothing to follow now (followers stay where they are)."""
    if name == LATEST:
        return latest_version(base_id, account_id=account_id)
    root_id = lineage_root_id(base_id)
    if root_id is None:
        return None
    return (
        Template.objects.filter(
            channel_pointers__lineage_id=root_id,
            channel_pointers__name=name,
            state=TemplateState.ACTIVE,
        )
        .filter(catalogue.usable_by_account(account_id))
        .select_related("base", "account")
        .first()
    )


def channel_is_known(base_id: int, name: str) -> bool:
    """A built-in channel (every lineage has them) or one the lineage's owner created."""
    if name in BUILT_IN_CHANNELS:
        return True
    root_id = lineage_root_id(base_id)
    return root_id is not None and Channel.objects.filter(lineage_id=root_id, name=name).exists()


def channels_list(*, lineage: Template) -> list[Channel]:
    """The stored channels of a lineage, built-ins first (stable and canary even before their
    rows exist: unsaved, pointing at nothing), then the others by name. 'latest' is not here:
    it is computed per account (`channel_version`)."""
    rows = {
        channel.name: channel
        for channel in Channel.objects.filter(lineage=lineage).select_related(
            "lineage", "version", "previous_version"
        )
    }
    built_ins = [
        rows.pop(name, None) or Channel(lineage=lineage, name=name)
        for name in STORED_BUILT_IN_CHANNELS
    ]
    return built_ins + sorted(rows.values(), key=lambda channel: channel.name)


def channel_history(channel: Channel) -> QuerySet[Event]:
    """Every move of the channel, newest first: who, when, from and to (version numbers)."""
    if channel.pk is None:
        return Event.objects.none()
    return Event.objects.filter(
        content_type=ContentType.objects.get_for_model(Channel), object_id=channel.pk
    ).order_by("-created_at", "-id")


def _channel_row(channel: Channel) -> dict:
    return {
        "name": channel.name,
        "built_in": channel.name in BUILT_IN_CHANNELS,
        "computed": False,
        "version": channel.version,
        "previous_version": channel.previous_version,
        "moved_at": channel.moved_at,
    }


def _latest_row(lineage: Template) -> dict:
    return {
        "name": LATEST,
        "built_in": True,
        "computed": True,
        "version": latest_version(lineage.pk, account_id=lineage.account_id),
        "previous_version": None,
        "moved_at": None,
    }


def channels_seen_by(*, lineage: Template) -> list[dict]:
    """What `channels/` lists (for the lineage's owners and staff): 'latest' as the owner's
    account sees it, then the stored channels. Two queries, whatever the number of channels."""
    return [_latest_row(lineage), *(_channel_row(c) for c in channels_list(lineage=lineage))]


def channel_seen_by(*, user: AbstractBaseUser, lineage: Template, name: str) -> dict | None:
    """One channel with its moves and its followers (another account's only to staff); None
    when the lineage has no such channel."""
    if name == LATEST:
        row = _latest_row(lineage)
        history: QuerySet[Event] | list = []
    else:
        channel = next((c for c in channels_list(lineage=lineage) if c.name == name), None)
        if channel is None:
            return None
        row, history = _channel_row(channel), channel_history(channel)
    followers = channel_followers(lineage_id=lineage.pk, channel=name)
    if not user.is_staff:
        own = set(catalogue.account_ids_of(user))
        followers = [follower for follower in followers if follower.account_id in own]
    return {**row, "history": history, "followers": followers}
