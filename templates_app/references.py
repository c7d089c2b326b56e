"""What keeps a template's bytes alive: a registry of reference providers.

The catalogue cannot know what the layers above it build on a template (VMs, VM pools, pinned
pool copies, channels). Each of those layers registers a provider here in its
`AppConfig.ready()`; the GC sweep, the delete response, `references/` and the admin ask this
registry and nothing else. One rule in one place: a template has a live reference when any
provider's `live()` queryset has a row for it.
"""

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from django.db.models import Exists, IntegerField, Q, QuerySet, Subquery, Value

from .models import Template


@dataclass(frozen=True)
class ReferenceProvider:
    """One kind of live reference.

    `live()` returns the holders of the outer template: a queryset filtered on
    `OuterRef("pk")` (of a Template). `rows_for(template)` lists the holders of one template
    as dicts (kind, account_id (None: infrastructure), id, name, state, account, zone, and
    optionally admin_url) for `references/` and the admin. `label` names one holder ("VM");
    `details` are counts that say more about the holders (name -> (label, correlated
    queryset)), e.g. destroyed VMs.
    """

    kind: str
    label: str
    live: Callable[[], QuerySet]
    rows_for: Callable[[Template], Iterable[dict[str, Any]]]
    details: dict[str, tuple[str, Callable[[], QuerySet]]] = field(default_factory=dict)


_providers: dict[str, ReferenceProvider] = {}
# The sum of every provider's count, built once per registry (with_reference_count): each
# listing request annotates it, and building it is a queryset per provider. Annotating
# resolves a copy, so the one expression serves every request.
_reference_total: Any = None
_reference_total_builds = 0  # how often it was (re)built: a compiled listing names it


def register_reference(provider: ReferenceProvider) -> None:
    """Called by an upper layer's `AppConfig.ready()`; registering a kind again replaces it."""
    global _reference_total
    _providers[provider.kind] = provider
    _reference_total = None


def reference_providers() -> list[ReferenceProvider]:
    return list(_providers.values())


def has_live_reference() -> Q:
    """For a Template queryset: rows that something still needs (`Q(pk__in=[])` if none)."""
    conditions = [Q(Exists(provider.live())) for provider in _providers.values()]
    return reduce(operator.or_, conditions, Q(pk__in=[]))


class _CountOf(Subquery):
    """COUNT(*) of a correlated queryset, 0 when it has no row."""

    template = "(SELECT COUNT(*) FROM (%(subquery)s) _holders)"
    output_field = IntegerField()


def reference_counts() -> dict[str, _CountOf]:
    """Count annotations per provider kind and detail (`<name>_references`), for a Template
    queryset."""
    counts = {}
    for kind, provider in _providers.items():
        counts[f"{kind}_references"] = _CountOf(provider.live().order_by().values("pk"))
        for name, (_label, holders) in provider.details.items():
            counts[f"{name}_references"] = _CountOf(holders().order_by().values("pk"))
    return counts


def describe_counts(counts: dict[str, int]) -> str:
    """'1 VM, 1 destroyed, 2 pinned pool copies': the non-zero counts in words."""
    words = []
    for kind, provider in _providers.items():
        if counts.get(kind):
            n = counts[kind]
            words.append(f"{n} {provider.label}{'' if n == 1 else 's'}")
        for name, (label, _holders) in provider.details.items():
            if counts.get(name):
                words.append(f"{counts[name]} {label}")
    return ", ".join(words)


def _total_of_counts() -> Any:
    global _reference_total, _reference_total_builds
    total = _reference_total
    if total is None:
        counts = [_CountOf(p.live().order_by().values("pk")) for p in _providers.values()]
        total = reduce(operator.add, counts, Value(0, output_field=IntegerField()))
        _reference_total = total
        _reference_total_builds += 1
    return total


def reference_count_generation() -> int:
    """Changes whenever the `references` annotation's SQL may have (a kind registered): part
    of the key of a statement compiled with it (templates_app.statements)."""
    _total_of_counts()
    return _reference_total_builds


def with_reference_count(queryset: QuerySet[Template]) -> QuerySet[Template]:
    """Annotate `references`: every live reference of every kind (a subquery per kind)."""
    return queryset.annotate(references=_total_of_counts())


def reference_rows(template: Template) -> list[dict[str, Any]]:
    """Every live reference of one template, provider by provider."""
    rows: list[dict[str, Any]] = []
    for provider in _providers.values():
        rows.extend(provider.rows_for(template))
    return rows


def references_seen_by(user, template: Template) -> dict[str, Any]:
    """What `references/` shows: the counts per kind to whoever may see the template, the
    holders themselves only to staff, and to other users only those of their own accounts."""
    from .selectors import account_ids_of

    rows = reference_rows(template)
    if not user.is_staff:
        own = set(account_ids_of(user))
        rows = [row for row in rows if row.get("account_id") in own]
    counts = reference_summary(template)
    return {"counts": {kind: counts.get(kind, 0) for kind in _providers}, "references": rows}


def reference_summary(template: Template) -> dict[str, int]:
    """How many live references of each kind (and detail) hold `template`."""
    counts = reference_counts()
    values = Template.objects.filter(pk=template.pk).annotate(**counts).values(*counts).first()
    return {name.removesuffix("_references"): (values or {}).get(name, 0) for name in counts}


def reference_total(template: Template) -> int:
    """How many live references hold `template`, all kinds together."""
    one = with_reference_count(Template.objects.filter(pk=template.pk))
    return one.values_list("references", flat=True).get()
