"""Recording state changes as Event rows (one per change; bulk for the sweep)."""

from collections.abc import Iterable

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import EmptyResultSet
from django.db import connection, models
from django.db.models import (
    BigIntegerField,
    DateTimeField,
    Expression,
    F,
    QuerySet,
    UUIDField,
    Value,
)
from django.db.models.functions import Substr
from django.utils import timezone

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


def record_events_from(
    queryset: QuerySet,
    *,
    object_repr: Expression,
    from_state: str,
    to_state: str,
    actor=None,
    actor_label: str = "system",
    reason: str = "",
    field: str = "state",
) -> int:
    """One event per row of `queryset`, written by one INSERT … SELECT in the database.

    For set-based transitions (the sweep): no model instance per event. `object_repr` is the
    SQL expression of the row's str() (the model's __str__ is Python, so the caller spells it).
    Returns the events written.
    """
    model = queryset.model
    has = {f.attname for f in model._meta.concrete_fields}
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    columns = {
        "content_type_id": Value(ContentType.objects.get_for_model(model).pk),
        "object_id": F("pk"),
        "object_uuid": F("uuid") if "uuid" in has else Value(None, output_field=UUIDField()),
        "object_repr": Substr(object_repr, 1, 255),
        "account_id": F("account_id") if "account_id" in has else Value(None, BigIntegerField()),
        "field": Value(field),
        "from_state": Value(from_state),
        "to_state": Value(to_state),
        "actor_id": Value(user.pk if user else None, output_field=BigIntegerField()),
        "actor_label": Value(actor_label_for(actor, actor_label)),
        "reason": Value(reason[:1024]),
        "created_at": Value(timezone.now(), output_field=DateTimeField()),
    }
    # Aliases that cannot clash with the model's own fields; the SELECT lists them in order.
    aliases = {f"_event_{name}": expression for name, expression in columns.items()}
    select = queryset.order_by().annotate(**aliases).values(*aliases)
    try:
        sql, params = select.query.sql_with_params()
    except EmptyResultSet:  # e.g. pk__in=[]: a batch in which nothing moved
        return 0
    targets = ", ".join(
        connection.ops.quote_name(Event._meta.get_field(name.removesuffix("_id")).column)
        if name.endswith("_id") and name != "object_id"
        else connection.ops.quote_name(Event._meta.get_field(name).column)
        for name in columns
    )
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {Event._meta.db_table} ({targets}) {sql}", params)
        return cursor.rowcount


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
