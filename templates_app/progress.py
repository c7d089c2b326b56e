"""Live progress of work in flight, for the admin's pages (static/stencil/progress.js polls
`/admin/stencil/progress/`): a registry of sources by kind, one query per kind asked.

The catalogue serves its store copies ("store"); compute registers pool copies ("pool") and
VMs ("vm") in AgentsAppConfig.ready(). A row says how far the work is (percent, bytes done of
the total when known), whether it is still in flight, and its state and error; the script
works out speed and time left from successive samples.
"""

from collections.abc import Callable, Iterable
from typing import Any

from django.db.models import QuerySet

from .choices import DownloadState
from .models import TemplateStoreRef

# A source: ids -> {id: row}. Rows: percent, done_bytes, total_bytes, active, state, error.
ProgressSource = Callable[[list[int]], dict[int, dict[str, Any]]]
_sources: dict[str, ProgressSource] = {}
MAX_IDS = 200

STORE_IN_FLIGHT = (
    DownloadState.NOT_DOWNLOADED,
    DownloadState.DOWNLOAD_IN_PROGRESS,
    DownloadState.NOT_UPLOADED,
    DownloadState.UPLOAD_IN_PROGRESS,
)


def register_progress_source(kind: str, source: ProgressSource) -> None:
    _sources[kind] = source


def progress_kinds() -> list[str]:
    return list(_sources)


def estimated_total(done: int, percent: int, known: int | None) -> int | None:
    """The whole size: the known one, else what `done` bytes at `percent` imply."""
    if known:
        return known
    if done and percent:
        return done * 100 // percent
    return None


def progress_of(wanted: dict[str, Iterable[int]]) -> dict[str, dict[int, dict[str, Any]]]:
    """{kind: {id: row}} for the ids asked of each known kind (at most MAX_IDS per kind)."""
    answer = {}
    for kind, ids in wanted.items():
        source = _sources.get(kind)
        if source is not None:
            answer[kind] = source(sorted(set(ids))[:MAX_IDS])
    return answer


def store_copies_progress(ids: list[int]) -> dict[int, dict[str, Any]]:
    rows: QuerySet = TemplateStoreRef.objects.filter(pk__in=ids).values(
        "pk",
        "download_state",
        "state",
        "download_percent",
        "downloaded_bytes",
        "physical_size",
        "error_text",
    )
    return {
        row["pk"]: {
            "percent": row["download_percent"],
            "done_bytes": row["downloaded_bytes"],
            "total_bytes": estimated_total(
                row["downloaded_bytes"], row["download_percent"], row["physical_size"]
            ),
            "active": row["download_state"] in STORE_IN_FLIGHT,
            "state": row["download_state"],
            "error": row["error_text"],
        }
        for row in rows
    }


register_progress_source("store", store_copies_progress)
