"""The reaper's catalogue half: store copies and uploads whose worker went away.

Every in-progress copy has an owner and a deadline: its lease (templates_app/leases.py). A
lease runs out only when its worker stopped renewing it, i.e. died. The reaper (beat, every
STENCIL_REAPER_INTERVAL_SECONDS) finds those rows, in batches of ids, and under each row's lock
re-checks and either re-queues the work or ends it in an error state, with one event per row:

- a download (DOWNLOAD_IN_PROGRESS) is re-queued to a storage worker; the download's own claim
  takes the copy over. So that a copy is not re-queued at every beat while that task waits in
  the queue, the reaper holds the lease for one more lease length under its own token: the
  task's claim sees the copy free only after that (it comes back when the hold runs out, see
  store_copy_download_task), and the reaper looks again only a lease length later still. Each
  re-queue counts as an attempt; after STENCIL_STORE_COPY_MAX_ATTEMPTS the copy is
  DOWNLOAD_ERROR ("no worker finished the download after N attempts"), retried by an operator.
- an upload (UPLOAD_IN_PROGRESS) is UPLOAD_ERROR: only its client can send the bytes again,
  which it may until the upload URL expires (the charge stays until then; the expiry sweep,
  abandon_expired_uploads, releases it).

Nothing slow happens under a lock: the re-queue is sent after commit.
"""

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import leases
from .choices import DownloadState, StoreRefState, TemplateState
from .copies import lease_length
from .events import record_copy_event, record_event
from .locks import lock_copy, lock_template
from .models import Event, TemplateStoreRef
from .uploads import UPLOAD_LEASE

BATCH_SIZE = 500
ACTOR_LABEL = "reaper"
# The reaper's own lease tokens (see the module docstring): "reaper-<uuid hex>".
TOKEN_PREFIX = "reaper-"
REQUEUED = "re-queued by the reaper"
UPLOAD_STOPPED = "the upload stopped (its web worker went away)"


@dataclass
class ReapResult:
    requeued: int = 0
    failed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def max_attempts() -> int:
    return max(1, settings.STENCIL_STORE_COPY_MAX_ATTEMPTS)


def expired_q(lease: timedelta, *, now: datetime) -> Q:
    """A lease that ran out: a worker's at its end; the reaper's own hold one lease later, so
    the task it re-queued has had a whole lease to claim the copy."""
    mine = Q(lease_owner__startswith=TOKEN_PREFIX)
    return (
        Q(lease_expires_at__isnull=True)
        | (~mine & Q(lease_expires_at__lte=now))
        | (mine & Q(lease_expires_at__lte=now - lease))
    )


def _still_expired(ref: TemplateStoreRef, lease: timedelta, now: datetime) -> bool:
    """expired_q, re-checked on the locked row."""
    if ref.lease_expires_at is None:
        return True
    if ref.lease_owner.startswith(TOKEN_PREFIX):
        return ref.lease_expires_at <= now - lease
    return ref.lease_expires_at <= now


def reap_expired(*, now: datetime | None = None, batch_size: int = BATCH_SIZE) -> ReapResult:
    """One reaper run over store copies and uploads: at most `batch_size` of each kind.

    A repeat finds nothing more to do: re-queued copies are held, failed ones left progress."""
    now = now or timezone.now()
    result = ReapResult()
    downloads = list(
        TemplateStoreRef.objects.filter(download_state=DownloadState.DOWNLOAD_IN_PROGRESS)
        .filter(expired_q(lease_length(), now=now))
        .order_by("pk")
        .values_list("pk", "template_id")[:batch_size]
    )
    for ref_id, template_id in downloads:
        outcome = _reap_download(ref_id, template_id, now=now)
        if outcome == "requeued":
            result.requeued += 1
        elif outcome == "failed":
            result.failed += 1
    uploads = list(
        TemplateStoreRef.objects.filter(download_state=DownloadState.UPLOAD_IN_PROGRESS)
        .filter(expired_q(UPLOAD_LEASE, now=now))
        .order_by("pk")
        .values_list("pk", flat=True)[:batch_size]
    )
    result.failed += sum(_reap_upload(ref_id, now=now) for ref_id in uploads)
    return result


def requeues_in_this_run(ref: TemplateStoreRef) -> int:
    """How often the reaper re-queued the copy since it last went into progress from another
    state (the events say it: one per re-queue)."""
    events = Event.objects.filter(
        content_type=ContentType.objects.get_for_model(TemplateStoreRef),
        object_id=ref.pk,
        field="download_state",
    )
    started = (
        events.filter(to_state=DownloadState.DOWNLOAD_IN_PROGRESS)
        .exclude(from_state=DownloadState.DOWNLOAD_IN_PROGRESS)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    requeues = events.filter(
        actor_label=ACTOR_LABEL,
        from_state=DownloadState.DOWNLOAD_IN_PROGRESS,
        to_state=DownloadState.DOWNLOAD_IN_PROGRESS,
    )
    if started is not None:
        requeues = requeues.filter(pk__gt=started)
    return requeues.count()


def _unclaimable_reason(ref: TemplateStoreRef) -> str:
    """Why a download cannot be re-queued ('' when it can): the claim would refuse it, or the
    bytes were being made from a VM's disk by a host (no URL to download them from)."""
    if ref.template.state != TemplateState.ACTIVE:
        return f"its worker went away and its template is {ref.template.state}"
    if ref.store is None or ref.state not in (StoreRefState.ALLOCATED, StoreRefState.CREATING):
        return f"its worker went away and the copy is {ref.state}"
    if not ref.template.url:
        return "the worker writing its bytes (from a VM's disk) went away; make the version again"
    return ""


@transaction.atomic
def _reap_download(ref_id: int, template_id: int, *, now: datetime) -> str:
    """'requeued', 'failed', or '' when the copy moved on meanwhile (re-checked under lock)."""
    from .tasks import store_copy_download_task

    lock_template(template_id)  # lock order: template -> copy
    ref = lock_copy(ref_id)
    if ref.download_state != DownloadState.DOWNLOAD_IN_PROGRESS:
        return ""
    if not _still_expired(ref, lease_length(), now):
        return ""
    reason = _unclaimable_reason(ref)
    if not reason:
        attempts = requeues_in_this_run(ref) + 1
        if attempts >= max_attempts():
            reason = f"no worker finished the download after {attempts} attempts"
    if reason:
        ref.step("fail_download")
        ref.error_text = reason
        leases.lease_release(ref)
        ref.save()
        record_copy_event(
            ref, before=DownloadState.DOWNLOAD_IN_PROGRESS, actor_label=ACTOR_LABEL, reason=reason
        )
        return "failed"
    # Hold the copy for the queued task (see the module docstring); progress fields stay.
    ref.lease_owner = TOKEN_PREFIX + leases.new_owner()
    ref.lease_expires_at = now + lease_length()
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        lease_owner=ref.lease_owner, lease_expires_at=ref.lease_expires_at
    )
    record_event(
        ref,
        from_state=ref.download_state,
        to_state=ref.download_state,
        field="download_state",
        actor_label=ACTOR_LABEL,
        reason=f"{REQUEUED} (attempt {attempts + 1} of {max_attempts()}): "
        "the download's lease ran out",
    )
    transaction.on_commit(lambda: store_copy_download_task.delay(ref_id=ref_id))
    return "requeued"


@transaction.atomic
def _reap_upload(ref_id: int, *, now: datetime) -> bool:
    """UPLOAD_IN_PROGRESS with a dead lease -> UPLOAD_ERROR; the charge stays (see above)."""
    template_id = TemplateStoreRef.objects.values_list("template_id", flat=True).get(pk=ref_id)
    lock_template(template_id)
    ref = lock_copy(ref_id)
    if ref.download_state != DownloadState.UPLOAD_IN_PROGRESS:
        return False
    if not _still_expired(ref, UPLOAD_LEASE, now):
        return False
    ref.step("fail_upload")
    ref.error_text = UPLOAD_STOPPED
    leases.lease_release(ref)
    ref.save()
    record_copy_event(
        ref, before=DownloadState.UPLOAD_IN_PROGRESS, actor_label=ACTOR_LABEL, reason=UPLOAD_STOPPED
    )
    return True
