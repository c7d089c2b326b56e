"""Queued GC sweeps: the API and the admin ask for one and answer at once; a worker runs it.

A run is a GcSweepRun row: QUEUED when asked for, RUNNING while a worker sweeps, then DONE (with
the sweep's result) or FAILED (with the error). The sweep itself is services.gc_sweep, which
works in its own short transactions; nothing here waits inside one.

When another sweep holds the sweep lock, gc_sweep does nothing and says `skipped`. The run is
then DONE with `result.skipped` true rather than retried: the sweep that held the lock removes
what this one would have (every sweep looks at every INACTIVE template), and the periodic sweep
catches the rest; whoever asked can see it was skipped and ask again.
"""

import logging

from django.db import transaction
from django.db.models import QuerySet
from django_fsm import can_proceed

from . import services
from .choices import GcSweepRunState
from .events import record_event
from .models import GcSweepRun

logger = logging.getLogger(__name__)

ACTOR_LABEL = "gc-sweep"


def _user_or_none(actor):
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None


@transaction.atomic
def gc_sweep_request(*, actor, template_ids: list[int] | None = None) -> GcSweepRun:
    """Queue a GC sweep (of `template_ids`, or of every INACTIVE template when None).

    The worker is told only after the row is committed; a rolled-back request sends nothing.
    """
    from .tasks import gc_sweep_run_task

    run = GcSweepRun.objects.create(
        requested_by=_user_or_none(actor),
        template_ids=sorted(set(template_ids)) if template_ids is not None else None,
    )
    record_event(
        run, from_state="", to_state=run.state, actor=actor, actor_label=ACTOR_LABEL, reason="asked"
    )
    transaction.on_commit(lambda: gc_sweep_run_task.delay(run.pk))
    return run


def _claim(run_id: int) -> GcSweepRun | None:
    """QUEUED -> RUNNING under the row lock; None when it is not QUEUED (a repeat delivery)."""
    with transaction.atomic():
        run = GcSweepRun.objects.select_for_update().get(pk=run_id)
        if not can_proceed(run.start):
            return None
        run.start()
        run.save(update_fields=["state", "started_at"])
        record_event(
            run, from_state=GcSweepRunState.QUEUED, to_state=run.state, actor_label=ACTOR_LABEL
        )
    return run


def _settle(run_id: int, *, result: dict | None = None, error_text: str = "") -> GcSweepRun:
    """RUNNING -> DONE with the result, or -> FAILED with the error."""
    with transaction.atomic():
        run = GcSweepRun.objects.select_for_update().get(pk=run_id)
        if result is not None:
            run.finish(result)
            fields, reason = ["state", "result", "finished_at"], _summary(result)
        else:
            run.fail(error_text)
            fields, reason = ["state", "error_text", "finished_at"], error_text
        run.save(update_fields=fields)
        record_event(
            run,
            from_state=GcSweepRunState.RUNNING,
            to_state=run.state,
            actor_label=ACTOR_LABEL,
            reason=reason,
        )
    return run


def _summary(result: dict) -> str:
    if result.get("skipped"):
        return "skipped: another sweep was running"
    return f"removed {result['removed_count']}, held {result['held_count']}"


def gc_sweep_run(*, run_id: int) -> GcSweepRun:
    """Run a queued sweep. A run that is already RUNNING, DONE or FAILED is left as it is.

    Any exception of the sweep moves the run to FAILED with its text (and logs the traceback);
    the run is never left RUNNING by an error.
    """
    run = _claim(run_id)
    if run is None:
        return GcSweepRun.objects.get(pk=run_id)
    try:
        result = services.gc_sweep(
            template_ids=run.template_ids, actor=run.requested_by, actor_label=ACTOR_LABEL
        )
    except Exception as exc:
        logger.exception("GC sweep run %s failed", run.uuid)
        return _settle(run_id, error_text=f"{type(exc).__name__}: {exc}")
    return _settle(run_id, result=result.as_dict())


# Reads (kept here with the runs rather than in selectors.py) ------------------------------


def gc_sweep_runs_list() -> QuerySet[GcSweepRun]:
    """Sweep runs, newest first, with who asked for them (one query per page)."""
    return GcSweepRun.objects.select_related("requested_by").order_by("-created_at", "-id")
