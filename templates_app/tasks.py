"""Celery tasks: thin wrappers over services, safe to repeat."""

from celery import shared_task

from . import services


@shared_task(name="templates_app.tasks.gc_sweep_task", ignore_result=False)
def gc_sweep_task(template_ids: list[int] | None = None, dry_run: bool = False) -> dict:
    """Periodic (beat) and on-demand sweep; a repeat finds nothing left to do."""
    return services.gc_sweep(template_ids=template_ids, dry_run=dry_run).as_dict()
