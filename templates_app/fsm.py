"""Set-based state changes that still go through the declared django-fsm transitions.

A sweep moves thousands of rows at once; loading each to call its transition would cost a
query per row. `bulk_transition` reads the source and target states from the transition's
declaration, so the UPDATE can only do what the transition allows.
"""

from collections.abc import Iterable
from typing import Any

from django.db.models import QuerySet


class UndeclaredSource(ValueError):
    """A caller asked for a move the transition does not declare."""


def transition_of(method) -> tuple[str, list[str], str]:
    """(field name, source states, target state) of a @transition method with one target."""
    meta = method._django_fsm
    targets = {t.target for t in meta.transitions.values()}
    if len(targets) != 1:
        raise ValueError(f"{method.__name__} has several targets {targets}: give one")
    field = meta.field if isinstance(meta.field, str) else meta.field.name
    return field, list(meta.transitions), targets.pop()


def bulk_transition(
    queryset: QuerySet,
    method,
    *,
    sources: Iterable[str] | None = None,
    **updates: Any,
) -> int:
    """Apply `method`'s transition to every row of `queryset` that is in one of its sources.

    `sources`, when given, must be declared sources of the transition (else UndeclaredSource):
    it narrows the move. Rows in any other state are left alone. Returns the rows moved.
    """
    field, declared, target = transition_of(method)
    chosen = list(sources) if sources is not None else declared
    undeclared = sorted(set(chosen) - set(declared))
    if undeclared:
        raise UndeclaredSource(
            f"{method.__qualname__} does not move {field} from {', '.join(undeclared)}"
        )
    return queryset.filter(**{f"{field}__in": chosen}).update(**{field: target}, **updates)
