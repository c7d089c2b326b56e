"""CloudStack's response formats: dates, list envelopes, pages."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .errors import CloudStackError

DEFAULT_PAGE_SIZE = 500  # CloudStack's default.page.size
MAX_PAGE_SIZE = 500


def cs_date(moment: datetime | None) -> str | None:
    """yyyy-MM-dd'T'HH:mm:ssZ in UTC, e.g. 2026-12-03T09:15:00+0000."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


def page_bounds(page: int | None, pagesize: int | None) -> tuple[int, int]:
    """(offset, limit) of a page; page 1 is the first. A bad page or size is a 431."""
    size = DEFAULT_PAGE_SIZE if pagesize is None else pagesize
    number = 1 if page is None else page
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise CloudStackError(f"pagesize: must be 1 to {MAX_PAGE_SIZE}")
    if number < 1:
        raise CloudStackError("page: must be 1 or more")
    return (number - 1) * size, size


def list_response(entity: str, rows: Sequence[dict], *, count: int | None = None) -> dict:
    """`{count, <entity>: [...]}`; an empty list is `{}` and a page past the end `{count}`, as
    CloudStack answers them."""
    total = len(rows) if count is None else count
    if not rows:
        return {"count": total} if total else {}
    return {"count": total, entity: list(rows)}


def paged(rows: Sequence[Any], page: int | None, pagesize: int | None) -> list[Any]:
    offset, limit = page_bounds(page, pagesize)
    return list(rows[offset : offset + limit])
