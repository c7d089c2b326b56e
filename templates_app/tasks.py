"""Celery tasks: thin wrappers over services, safe to repeat."""

from celery import shared_task

from . import services


@shared_task(name="templates_app.tasks.gc_sweep_task", ignore_result=False)
def gc_sweep_task(template_ids: list[int] | None = None, dry_run: bool = False) -> dict:
    """Periodic (beat) and on-demand sweep; a repeat finds nothing left to do."""
    return services.gc_sweep(template_ids=template_ids, dry_run=dry_run).as_dict()


@shared_task(name="templates_app.tasks.gc_sweep_run_task")
def gc_sweep_run_task(run_id: int) -> str:
    """A sweep queued from the API or the admin; a repeat delivery leaves the run as it is."""
    from .sweeps import gc_sweep_run

    return gc_sweep_run(run_id=run_id).state


@shared_task(name="templates_app.tasks.store_copy_download_task", acks_late=True)
def store_copy_download_task(ref_id: int) -> str:
    """Storage worker: download one copy. A redelivery after a crash takes over the lease."""
    from .copies import store_copy_download

    return store_copy_download(ref_id=ref_id).download_state


@shared_task(name="templates_app.tasks.template_sync_task")
def template_sync_task(dry_run: bool = False) -> dict:
    """Template sync (also sent when a storage worker starts)."""
    from .sync import template_sync

    return template_sync(dry_run=dry_run).as_dict()


@shared_task(name="templates_app.tasks.abandon_expired_uploads_task")
def abandon_expired_uploads_task() -> int:
    """Beat: uploads past their expiry are abandoned and their charge released."""
    from .uploads import abandon_expired_uploads

    return abandon_expired_uploads()
