"""Pagination of the API's lists.

Every list: `?page=N&page_size=M` (at most 500 per page). The template listing (the one that
grows with the catalogue) adds a count that stays cheap and a keyset cursor; docs/api.md says
what a client sees.
"""

import functools
import json
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core import signing
from django.db import connection
from django.db.models import DateTimeField, IntegerField, Q, QuerySet, Subquery
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from templates_app.references import reference_count_generation
from templates_app.statements import StatementCache, Variable

CURSOR_SALT = "stencil.templates.cursor"


class StencilPagination(PageNumberPagination):
    """`?page=N&page_size=M` (at most 500 per page)."""

    page_size_query_param = "page_size"
    max_page_size = 500


# The planner's estimates, per worker process: key -> (when, rows).
ESTIMATE_TTL_SECONDS = 60.0
ESTIMATE_CACHE_SIZE = 512
_estimates: dict[Hashable, tuple[float, int]] = {}
_estimates_lock = threading.Lock()


def estimated_rows(
    queryset: QuerySet | Callable[[], QuerySet], *, key: Hashable | None = None
) -> int | None:
    """The planner's row estimate for the queryset (PostgreSQL), None elsewhere.

    An estimate is a statistic that moves with ANALYZE, not with each insert: it is kept
    ESTIMATE_TTL_SECONDS per worker process and `key` (what decides the statement; by
    default the statement itself), so a listing beyond the exact limit costs one EXPLAIN a
    minute, not one per request. With a caller-given key, `queryset` may be a function
    that builds it, called on a miss only.
    """
    if connection.vendor != "postgresql":
        return None
    if key is None:
        queryset = queryset() if callable(queryset) else queryset
        sql, params = _count_sql(queryset)
        key = (sql, tuple(str(param) for param in params))
    now = time.monotonic()
    cached = _estimates.get(key)
    if cached is not None and now - cached[0] < ESTIMATE_TTL_SECONDS:
        return cached[1]
    sql, params = _count_sql(queryset() if callable(queryset) else queryset)
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    rows = int(plan[0]["Plan"]["Plan Rows"])
    with _estimates_lock:
        if len(_estimates) >= ESTIMATE_CACHE_SIZE:
            _estimates.clear()  # many users' statements: start over rather than track ages
        _estimates[key] = (now, rows)
    return rows


def fresh_estimate(key: Hashable) -> int | None:
    """The estimate kept for `key` if it is younger than ESTIMATE_TTL_SECONDS, else None."""
    cached = _estimates.get(key)
    if cached is not None and time.monotonic() - cached[0] < ESTIMATE_TTL_SECONDS:
        return cached[1]
    return None


def _count_sql(queryset: QuerySet) -> tuple[str, tuple]:
    return queryset.order_by().values("pk").query.sql_with_params()


def forget_estimates() -> None:
    """Drop the cached estimates of this process (tests)."""
    with _estimates_lock:
        _estimates.clear()


class _CappedCount(Subquery):
    """COUNT(*) of an uncorrelated, LIMITed queryset: PostgreSQL runs it once per statement
    (an InitPlan), so the count rides along with the page instead of costing a query."""

    template = "(SELECT COUNT(*) FROM (%(subquery)s) _capped)"
    output_field = IntegerField()


def _visible(queryset: QuerySet, limit: int) -> QuerySet:
    """The listing's rows, at most `limit + 1`, for its capped count.

    Ordered by id, the count walks template_active_listing_idx (index only, in id order) and
    stops after `limit + 1` rows; unordered, the planner preferred the visibility index,
    whose private rows come first and fail the filter. The rows' own annotations (reference
    counts: a subquery per kind) that no filter uses are left out rather than resolved and
    relabelled a second time.
    """
    visible = queryset.order_by("pk").values("pk")
    used = {ref.refs for ref in visible.query.where.get_refs()}
    annotations = visible.query.annotations
    visible.query.annotations = {k: v for k, v in annotations.items() if k in used}
    return visible[: limit + 1]


# The listing's compiled page statements, per worker process.
_statements = StatementCache()


def forget_statements() -> None:
    """Drop this process's compiled listing statements (tests)."""
    _statements.clear()


class TemplateListPagination(StencilPagination):
    """Page numbers with a capped count, plus an opaque keyset `cursor` (`next_cursor`).

    The count is exact up to STENCIL_LISTING_EXACT_COUNT_LIMIT rows (a COUNT over a LIMIT in
    the page's own statement, visiting at most that many rows); beyond, the planner's estimate
    (one EXPLAIN) with `count_is_estimate` true; then any page number is accepted and a page
    past the real end is a 404. The cursor holds the last row's (created_at, id), signed: a
    page after it costs the same at any depth (an index range scan), and rows inserted
    meanwhile (newer, so before it) neither repeat nor skip rows. It follows the default
    ordering (newest first) only.
    """

    cursor_query_param = "cursor"
    display_page_controls = False

    def paginate_queryset(self, queryset, request, view=None):
        raise TypeError("the template listing pages through paginate_listing")

    def paginate_listing(
        self,
        request,
        *,
        build: Callable[[], QuerySet],
        key: Hashable,
        columns: Sequence[str],
    ) -> list[dict[str, Any]]:
        """The page's rows as dicts of `columns` (plus `pk` and `created_at`).

        `build` makes the listing's queryset (filters applied, 400s raised); `key` is what
        decides it (the caller, the filters). The page's statement is compiled once per key
        and page shape (templates_app.statements): a cache hit builds no queryset at all.
        """
        self.request = request
        self.cursor_mode = self.cursor_query_param in request.query_params
        params = request.query_params
        page_size = self.get_page_size(request)
        cursor: dict[str, Any] = {}
        if self.cursor_mode:
            if params.get("ordering") or params.get(self.page_query_param):
                raise ValidationError(
                    {"cursor": ["cursor cannot be combined with ordering or page (newest first)"]}
                )
            number, offset = None, 0
            raw = params[self.cursor_query_param]
            if raw:
                created_at, pk = self._decode(raw)
                cursor = {"cursor_created_at": created_at, "cursor_pk": pk}
        else:
            try:
                number = int(params.get(self.page_query_param, 1))
                if number < 1:
                    raise ValueError(number)
            except (TypeError, ValueError):
                raise NotFound("Invalid page.") from None
            offset = (number - 1) * page_size
        limit = settings.STENCIL_LISTING_EXACT_COUNT_LIMIT
        build = functools.cache(build)
        statement_key = self._statement_key(request)
        # Known (within ESTIMATE_TTL_SECONDS) to be beyond the exact limit: counted by the
        # estimate alone, without the capped count (half of the page statement's time).
        estimate = fresh_estimate(statement_key)
        statement = _statements.get_or_compile(
            (
                key,
                statement_key,
                reference_count_generation(),
                self.cursor_mode,
                bool(cursor),
                limit if estimate is None else None,
                *columns,
            ),
            lambda: self._page_queryset(
                build(), bool(cursor), None if estimate is not None else limit, columns
            ),
        )
        rows = statement.fetch(limit=page_size + 1, offset=offset, **cursor)
        more = len(rows) > page_size
        if estimate is None:
            capped = rows[0]["_listing_count"] if rows else _visible(build(), limit).count()
            if capped > limit:
                estimate = estimated_rows(build, key=statement_key)
                if estimate is None:  # SQLite (the demo): an exact count is cheap enough
                    capped = build().count()
        rows = rows[:page_size]
        self.count_is_estimate = estimate is not None
        if estimate is not None:
            self.count = max(estimate, limit + 1, offset + len(rows) + int(more))
        else:
            self.count = capped
        if number is not None and number > 1 and not rows:
            raise NotFound("Invalid page.")
        self.number, self.has_next = number, more
        self.next_cursor = None
        if rows and more and not params.get("ordering"):
            last = rows[-1]
            self.next_cursor = signing.dumps(
                [last["created_at"].isoformat(), last["pk"]], salt=CURSOR_SALT, compress=True
            )
        return rows

    def _page_queryset(
        self, queryset: QuerySet, after_cursor: bool, limit: int | None, columns: Sequence[str]
    ) -> QuerySet:
        """The page's rows, with the count capped at `limit` riding along (None: without);
        the cursor's position and the page's bounds are bound when the statement runs."""
        rows_queryset = queryset
        if self.cursor_mode:
            rows_queryset = queryset.order_by("-created_at", "-pk")
        if after_cursor:
            created_at = Variable("cursor_created_at", DateTimeField())
            pk = Variable("cursor_pk", IntegerField())
            rows_queryset = rows_queryset.filter(
                # The first bound lets the index range scan start at the cursor.
                Q(created_at__lte=created_at),
                Q(created_at__lt=created_at) | Q(created_at=created_at, pk__lt=pk),
            )
        names = dict.fromkeys(["pk", "created_at", *columns])
        if limit is None:
            return rows_queryset.values(*names)
        counted = rows_queryset.annotate(_listing_count=_CappedCount(_visible(queryset, limit)))
        return counted.values(*names, "_listing_count")

    def _statement_key(self, request) -> tuple:
        """What decides the listing's rows: the path, the caller and every query parameter
        but those that only pick a page of them."""
        page_only = {self.page_query_param, self.page_size_query_param, self.cursor_query_param}
        params = tuple(
            sorted((k, tuple(v)) for k, v in request.query_params.lists() if k not in page_only)
        )
        user = request.user
        return (request.path, user.pk, user.is_staff, params)

    def _decode(self, raw: str) -> tuple[datetime, int]:
        try:
            created_at, pk = signing.loads(raw, salt=CURSOR_SALT)
            return datetime.fromisoformat(created_at), int(pk)
        except (signing.BadSignature, ValueError, TypeError) as exc:
            raise ValidationError(
                {"cursor": ["invalid cursor: pass a next_cursor this listing returned"]}
            ) from exc

    def get_paginated_response(self, data):
        url = self.request.build_absolute_uri()
        if self.cursor_mode:
            next_url = (
                replace_query_param(url, self.cursor_query_param, self.next_cursor)
                if self.next_cursor
                else None
            )
            previous = None
        else:
            next_url = (
                replace_query_param(url, self.page_query_param, self.number + 1)
                if self.has_next
                else None
            )
            if self.number <= 1:
                previous = None
            elif self.number == 2:
                previous = remove_query_param(url, self.page_query_param)
            else:
                previous = replace_query_param(url, self.page_query_param, self.number - 1)
        return Response(
            {
                "count": self.count,
                "count_is_estimate": self.count_is_estimate,
                "next": next_url,
                "previous": previous,
                "next_cursor": self.next_cursor,
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema):
        answer = super().get_paginated_response_schema(schema)
        answer["properties"]["count_is_estimate"] = {"type": "boolean"}
        answer["properties"]["next_cursor"] = {"type": "string", "nullable": True}
        return answer

    def get_schema_operation_parameters(self, view):
        return [
            *super().get_schema_operation_parameters(view),
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "Opaque keyset cursor: a next_cursor of this listing ('' for "
                "the first page). Not with page or ordering.",
                "schema": {"type": "string"},
            },
        ]
