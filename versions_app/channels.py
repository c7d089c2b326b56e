"""Release channels of a lineage: create, promote, roll back (issue 15).

A channel points at one version of its lineage (or at nothing); VMs and VM pools that follow it
are rebuilt onto its version when it moves (compute does that on `signals.channel_moved`). Lock
order: the target version's row FOR SHARE (like a deploy: a concurrent delete or sweep waits),
then the channel's row; a promote never waits on anything outside the database.
"""

import re

from django.db import IntegrityError, transaction
from django.utils import timezone

from templates_app.choices import StoreRefState, TemplateState
from templates_app.errors import InvalidInput, StencilError
from templates_app.events import record_event
from templates_app.launch_permissions import may_manage
from templates_app.locks import lock_template_shared
from templates_app.models import Template, TemplateStoreRef, Zone

from .channel_followers import follower_zone_ids
from .models import (
    BUILT_IN_CHANNELS,
    CHANNEL_NAME_PATTERN,
    CHANNEL_NAME_RULE,
    LATEST,
    STORED_BUILT_IN_CHANNELS,
    Channel,
)
from .selectors import lineage_root_id
from .signals import send_channel_moved_on_commit


class ChannelConflict(StencilError):
    """The channel cannot move there now (the version is not ACTIVE, lacks bytes where the
    followers run, or there is nothing to roll back to); 409 naming what is missing."""

    status_code = 409
    code = "channel_conflict"


def checked_channel_name(name: str, *, field: str = "name") -> str:
    """The one rule of channel names; 400 naming `field` otherwise."""
    if not isinstance(name, str) or not re.fullmatch(CHANNEL_NAME_PATTERN, name):
        raise InvalidInput(f"a channel name is {CHANNEL_NAME_RULE}", field=field)
    return name


def _lineage(template_id: int, actor) -> Template:
    root_id = lineage_root_id(template_id)
    lineage = Template.objects.select_related("account").filter(pk=root_id).first()
    if lineage is None:
        raise InvalidInput(f"unknown template id {template_id}", field="template")
    if actor is not None and not may_manage(actor, lineage):
        raise InvalidInput(
            "only the lineage's account (or an administrator) manages its channels",
            field="template",
        )
    return lineage


def _lock_channel(lineage: Template, name: str) -> Channel:
    """The channel's row under FOR UPDATE; stable and canary rows are made on first use
    (INSERT ... ON CONFLICT DO NOTHING: two first promotes cannot both insert)."""
    checked_channel_name(name)
    if name == LATEST:
        raise InvalidInput(
            "'latest' is computed (the newest ACTIVE version): it cannot be moved", field="name"
        )
    if name in STORED_BUILT_IN_CHANNELS:
        Channel.objects.bulk_create([Channel(lineage=lineage, name=name)], ignore_conflicts=True)
    channel = (
        Channel.objects.select_for_update(of=("self",))
        .select_related("lineage", "version", "previous_version")
        .filter(lineage=lineage, name=name)
        .first()
    )
    if channel is None:
        raise InvalidInput(f"lineage '{lineage}' has no channel '{name}'", field="name")
    return channel


@transaction.atomic
def channel_create(*, template_id: int, name: str, actor) -> Channel:
    """A custom channel of the lineage, pointing at nothing (owners and staff)."""
    lineage = _lineage(template_id, actor)
    checked_channel_name(name)
    if name in BUILT_IN_CHANNELS:
        raise InvalidInput(f"'{name}' is a built-in channel of every lineage", field="name")
    exists = InvalidInput(f"lineage '{lineage}' already has a channel '{name}'", field="name")
    if Channel.objects.filter(lineage=lineage, name=name).exists():
        raise exists
    try:
        with transaction.atomic():  # a savepoint: a concurrent create of the name loses here
            channel = Channel.objects.create(lineage=lineage, name=name)
    except IntegrityError:
        raise exists from None
    record_event(
        channel, field="version", from_state="", to_state="", actor=actor, reason="created"
    )
    return channel


def _missing_zones(version: Template, zone_ids: set[int]) -> list[Zone]:
    """The zones of `zone_ids` where `version` has no READY copy on an image store."""
    ready = set(
        TemplateStoreRef.objects.filter(
            template=version, state=StoreRefState.READY, store__zone_id__in=zone_ids
        ).values_list("store__zone_id", flat=True)
    )
    return list(Zone.objects.filter(pk__in=zone_ids - ready).order_by("name"))


def _check_target(channel: Channel, version: Template) -> None:
    if version.state != TemplateState.ACTIVE:
        raise ChannelConflict(
            f"version {version.version_number} of '{channel.lineage}' is {version.state}: "
            "a channel points only at an ACTIVE version"
        )
    zone_ids = follower_zone_ids(lineage_id=channel.lineage_id, channel=channel.name)
    missing = _missing_zones(version, zone_ids)
    if missing:
        names = ", ".join(zone.name for zone in missing)
        raise ChannelConflict(
            f"version {version.version_number} of '{channel.lineage}' has no READY copy in "
            f"zone(s) {names}, where followers of '{channel.name}' run"
        )


def _number(version: Template | None) -> str:
    return "" if version is None else str(version.version_number)


def _move(channel: Channel, target: Template, *, actor, action: str) -> Channel:
    """Point the locked channel at `target` (locked FOR SHARE, checked), record the move and,
    after commit, tell the followers."""
    before = channel.version
    channel.previous_version = before
    channel.version = target
    channel.moved_at = timezone.now()
    channel.save(update_fields=["version", "previous_version", "moved_at"])
    record_event(
        channel,
        field="version",
        from_state=_number(before),
        to_state=_number(target),
        actor=actor,
        reason=f"{action}: version {_number(before) or 'none'} -> {_number(target)}",
    )
    send_channel_moved_on_commit(
        lineage_id=channel.lineage_id,
        channel=channel.name,
        from_version_id=None if before is None else before.pk,
        to_version_id=target.pk,
    )
    return channel


def _lineage_version(lineage: Template, version_id: int) -> Template:
    """`version_id` as a member of `lineage`; another lineage's template is unknown here."""
    version = Template.objects.filter(pk=version_id).only("base_id").first()
    if version is None or (version.base_id or version.pk) != lineage.pk:
        raise InvalidInput(
            f"no version with id {version_id} in the lineage of '{lineage}'", field="version"
        )
    return version


@transaction.atomic
def channel_promote(*, template_id: int, name: str, version_id: int, actor) -> Channel:
    """Point channel `name` of `template_id`'s lineage at `version_id`: an ACTIVE version of
    the lineage with READY bytes in every zone where the channel's followers run (409 naming
    what is missing). Promoting to where it points already changes nothing."""
    lineage = _lineage(template_id, actor)
    _lineage_version(lineage, version_id)
    version = lock_template_shared(version_id)
    channel = _lock_channel(lineage, name)
    if channel.version_id == version.pk:
        return channel
    _check_target(channel, version)
    return _move(channel, version, actor=actor, action="promote")


@transaction.atomic
def channel_rollback(*, template_id: int, name: str, actor) -> Channel:
    """Move channel `name` back to the version it pointed at before its last move (a second
    rollback undoes the first, like `kubectl rollout undo`); the same checks as a promote."""
    lineage = _lineage(template_id, actor)
    peek = Channel.objects.filter(lineage=lineage, name=checked_channel_name(name)).first()
    if peek is None or peek.previous_version_id is None:
        raise ChannelConflict(
            f"channel '{name}' of '{lineage}' has no previous version to roll back to"
        )
    version = lock_template_shared(peek.previous_version_id)
    channel = _lock_channel(lineage, name)
    if channel.previous_version_id != version.pk:  # moved meanwhile: roll back what is there now
        raise ChannelConflict(f"channel '{name}' of '{lineage}' moved meanwhile: try again")
    _check_target(channel, version)
    return _move(channel, version, actor=actor, action="rollback")
