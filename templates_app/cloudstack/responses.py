"""CloudStack's response formats: dates, list envelopes, pages."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

from .errors import CloudStackError

# The CloudStack release whose API the facade follows (listCapabilities, the XML root).
CLOUDSTACK_VERSION = "4.19.0.0"
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


def without_nulls(value: Any) -> Any:
    """CloudStack's serializer leaves out fields that are null (Gson's default): clients test
    for a field's presence (libcloud's `img.get("size")`), so a None is omitted, never sent."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value if item is not None]
    return value


def _xml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _xml_fill(parent: ElementTree.Element, key: str, value: Any) -> None:
    """One field as CloudStack's XML serializer writes it: a list is the element repeated,
    an object nested elements, anything else text."""
    if isinstance(value, list):
        for item in value:
            _xml_fill(parent, key, item)
        return
    element = ElementTree.SubElement(parent, key)
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            _xml_fill(element, inner_key, inner)
    else:
        element.text = _xml_text(value)


def xml_document(envelope: str, body: dict) -> bytes:
    """`response=xml` (CloudStack's default): `<listzonesresponse cloud-stack-version=...>
    <count>1</count><zone>...</zone></listzonesresponse>`."""
    root = ElementTree.Element(envelope, {"cloud-stack-version": CLOUDSTACK_VERSION})
    for key, value in body.items():
        if key == "uuidList" and not value:
            continue
        _xml_fill(root, key, value)
    return ElementTree.tostring(root, encoding="UTF-8", xml_declaration=True)
