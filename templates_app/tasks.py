"""Celery tasks: thin wrappers over services, safe to repeat."""

from celery import shared_task
from django.utils import timezone

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


@shared_task(
    name="templates_app.tasks.store_copy_download_task", acks_late=True, bind=True, max_retries=None
)
def store_copy_download_task(self, ref_id: int) -> str:
    """Storage worker: download one copy. A copy another attempt holds is looked at again when
    that lease runs out: a live worker will have finished or renewed it; a dead one's copy is
    taken over then (a redelivered message never just acknowledges and forgets)."""
    from .copies import store_copy_download

    ref = store_copy_download(ref_id=ref_id)
    wait = lease_wait_seconds(ref)
    if wait is not None:
        raise self.retry(countdown=wait)
    return ref.download_state


def lease_wait_seconds(ref) -> float | None:
    """Seconds until another attempt's live lease on `ref` runs out, or None (nothing held)."""
    if ref.download_state != "DOWNLOAD_IN_PROGRESS" or ref.lease_expires_at is None:
        return None
    left = (ref.lease_expires_at - timezone.now()).total_seconds()
    return max(left, 0) + 1 if left > 0 else None


@shared_task(name="templates_app.tasks.image_store_fill_task", acks_late=True)
def image_store_fill_task(store_id: int) -> int:
    """Storage worker: a new image store gets copies of the templates that belong on it; a
    repeat queues nothing twice."""
    from .store_fill import image_store_fill

    return len(image_store_fill(store_id=store_id))


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


@shared_task(name="templates_app.tasks.reap_expired_task")
def reap_expired_task() -> dict:
    """Beat: store copies and uploads whose worker went away are re-queued or failed."""
    from .reaper import reap_expired

    return reap_expired().as_dict()
