"""Pagination of the API's lists.

Every list: `?page=N&page_size=M` (at most 500 per page). The template listing (the one that
grows with the catalogue) adds a count that stays cheap and a keyset cursor; docs/api.md says
what a client sees.
"""

from datetime import datetime

from django.conf import settings
from django.core import signing
from django.core.paginator import InvalidPage, Paginator
from django.db import connection
from django.db.models import Q, QuerySet
from django.utils.functional import cached_property
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

CURSOR_SALT = "stencil.templates.cursor"


class StencilPagination(PageNumberPagination):
    """`?page=N&page_size=M` (at most 500 per page)."""

    page_size_query_param = "page_size"
    max_page_size = 500


def estimated_rows(queryset: QuerySet) -> int | None:
    """The planner's row estimate for the queryset (PostgreSQL), None elsewhere."""
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        import json

        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class CappedCountPaginator(Paginator):
    """Counts exactly up to STENCIL_LISTING_EXACT_COUNT_LIMIT rows (a COUNT over a LIMIT, so it
    visits at most that many rows); beyond, the planner's estimate. `count_is_estimate` says
    which. With an estimate any page number is accepted: a page past the real end is a 404."""

    @cached_property
    def count(self) -> int:
        limit = settings.STENCIL_LISTING_EXACT_COUNT_LIMIT
        self.count_is_estimate = False
        capped = self.object_list.order_by()[: limit + 1].count()
        if capped <= limit:
            return capped
        estimate = estimated_rows(self.object_list)
        if estimate is None:  # SQLite (the demo): small catalogues, an exact count is fine
            return self.object_list.count()
        self.count_is_estimate = True
        return max(estimate, limit + 1)

    def validate_number(self, number):
        if self.count and getattr(self, "count_is_estimate", False):
            try:
                number = int(number)
            except (TypeError, ValueError):
                raise InvalidPage("That page number is not an integer") from None
            if number < 1:
                raise InvalidPage("That page number is less than 1")
            return number
        return super().validate_number(number)

    def page(self, number):
        number = self.validate_number(number)
        if not getattr(self, "count_is_estimate", False):
            return super().page(number)
        # Paginator.page would cut the last page at the (estimated) count.
        bottom = (number - 1) * self.per_page
        page = self._get_page(self.object_list[bottom : bottom + self.per_page], number, self)
        if number != 1 and not page.object_list:
            raise InvalidPage("That page contains no results")
        return page


class TemplateListPagination(StencilPagination):
    """Page numbers with a capped count, plus an opaque keyset `cursor` (`next_cursor`).

    The cursor holds the last row's (created_at, id), signed: a page after it costs the same
    at any depth (an index range scan), and rows inserted meanwhile (newer, so before it)
    neither repeat nor skip rows. It follows the default ordering (newest first) only.
    """

    django_paginator_class = CappedCountPaginator
    cursor_query_param = "cursor"

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        self.cursor_mode = self.cursor_query_param in request.query_params
        if not self.cursor_mode:
            self.count_is_estimate = False
            rows = super().paginate_queryset(queryset, request, view)
            self.count_is_estimate = getattr(self.page.paginator, "count_is_estimate", False)
            full = len(rows) == self.page.paginator.per_page
            more = self.count_is_estimate or self.page.has_next()
            self._set_next_cursor(rows, full=full and more)
            return rows
        if request.query_params.get("ordering") or request.query_params.get(self.page_query_param):
            raise ValidationError(
                {"cursor": ["cursor cannot be combined with ordering or page (newest first)"]}
            )
        page_size = self.get_page_size(request)
        paginator = CappedCountPaginator(queryset, page_size)
        self.total = paginator.count
        self.count_is_estimate = paginator.count_is_estimate
        raw = request.query_params[self.cursor_query_param]
        if raw:
            created_at, pk = self._decode(raw)
            queryset = queryset.filter(
                # The first bound lets the index range scan start at the cursor.
                Q(created_at__lte=created_at),
                Q(created_at__lt=created_at) | Q(created_at=created_at, pk__lt=pk),
            )
        rows = list(queryset.order_by("-created_at", "-pk")[: page_size + 1])
        has_next = len(rows) > page_size
        rows = rows[:page_size]
        self._set_next_cursor(rows, full=has_next)
        return rows

    def _set_next_cursor(self, rows, *, full: bool) -> None:
        ordering = self.request.query_params.get("ordering")
        self.next_cursor = None
        if rows and full and not ordering:
            last = rows[-1]
            self.next_cursor = signing.dumps(
                [last.created_at.isoformat(), last.pk], salt=CURSOR_SALT, compress=True
            )

    def _decode(self, raw: str) -> tuple[datetime, int]:
        try:
            created_at, pk = signing.loads(raw, salt=CURSOR_SALT)
            return datetime.fromisoformat(created_at), int(pk)
        except (signing.BadSignature, ValueError, TypeError) as exc:
            raise ValidationError(
                {"cursor": ["invalid cursor: pass a next_cursor this listing returned"]}
            ) from exc

    def get_paginated_response(self, data):
        if self.cursor_mode:
            url = self.request.build_absolute_uri()
            next_url = (
                replace_query_param(url, self.cursor_query_param, self.next_cursor)
                if self.next_cursor
                else None
            )
            count = self.total
            previous = None
        else:
            next_url, previous = self.get_next_link(), self.get_previous_link()
            count = self.page.paginator.count
        return Response(
            {
                "count": count,
                "count_is_estimate": self.count_is_estimate,
                "next": next_url,
                "previous": previous,
                "next_cursor": self.next_cursor,
                "results": data,
            }
        )

    def get_next_link(self):
        if self.count_is_estimate:
            # The page count is not known: a full page has a next one (maybe empty: 404).
            if len(self.page.object_list) < self.page.paginator.per_page:
                return None
            url = self.request.build_absolute_uri()
            return replace_query_param(url, self.page_query_param, self.page.number + 1)
        return super().get_next_link()

    def get_paginated_response_schema(self, schema):
        answer = super().get_paginated_response_schema(schema)
        answer["properties"]["count_is_estimate"] = {"type": "boolean"}
        answer["properties"]["next_cursor"] = {"type": "string", "nullable": True}
        return answer
