"""Recording state changes as Event rows (one per change; bulk for the sweep)."""

from collections.abc import Iterable

from django.contrib.contenttypes.models import ContentType
from django.db import models

from .models import Event


def actor_label_for(actor, fallback: str = "system") -> str:
    if actor is not None and getattr(actor, "is_authenticated", False):
        return actor.get_username()
    return fallback


def build_event(
    obj: models.Model,
    *,
    from_state: str,
    to_state: str,
    actor=None,
    actor_label: str = "system",
    reason: str = "",
    field: str = "state",
) -> Event:
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return Event(
        content_type=ContentType.objects.get_for_model(type(obj)),
        object_id=obj.pk,
        object_uuid=getattr(obj, "uuid", None),
        object_repr=str(obj)[:255],
        account_id=getattr(obj, "account_id", None),
        field=field,
        from_state=from_state,
        to_state=to_state,
        actor=user,
        actor_label=actor_label_for(actor, actor_label),
        reason=reason[:1024],
    )


def record_event(obj: models.Model, **kwargs) -> Event:
    """Save one event for one state change of obj."""
    event = build_event(obj, **kwargs)
    event.save()
    return event


def record_events(events: Iterable[Event]) -> None:
    Event.objects.bulk_create(list(events), batch_size=1000)


def record_copy_event(ref: models.Model, *, before: str, actor_label: str, reason: str) -> Event:
    """A store or pool copy's download_state changed."""
    return record_event(
        ref,
        from_state=before,
        to_state=ref.download_state,
        field="download_state",
        actor_label=actor_label,
        reason=reason,
    )
