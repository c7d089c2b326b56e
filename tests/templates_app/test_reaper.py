"""The reaper over store copies and uploads: a download whose worker died is re-queued (held
for the queued task, at most N attempts, then DOWNLOAD_ERROR); an upload whose web worker died is
UPLOAD_ERROR with its charge kept; live ones are left alone; a repeat run is a no-op."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from templates_app import copies, leases, reaper, tasks
from templates_app.models import Account, Event, TemplateStoreRef
from templates_app.uploads import abandon_expired_uploads

from .test_uploads import ask, died_mid_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent_downloads(monkeypatch):
    """Download tasks sent after commit, recorded instead of going to the broker."""
    calls = []
    monkeypatch.setattr(tasks.store_copy_download_task, "delay", lambda **kw: calls.append(kw))
    return calls


@pytest.fixture
def downloading(register):
    """A store copy a storage worker claimed (its 'download attempt 1' event recorded)."""
    template = register()
    ref = TemplateStoreRef.objects.get(template=template)
    claimed = copies._claim(ref.pk, leases.new_owner())
    assert claimed is not None and claimed.download_state == "DOWNLOAD_IN_PROGRESS"
    return claimed


def worker_dies(ref, *, ago: float = 1) -> None:
    """Its worker stopped renewing: the lease ran out `ago` seconds ago."""
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=ago)
    )


def reap(capture, *, now=None):
    with capture(execute=True):
        return reaper.reap_expired(now=now)


def reaper_events(ref):
    return Event.objects.filter(object_id=ref.pk, actor_label="reaper", field="download_state")


# Store downloads ----------------------------------------------------------------------------


def test_a_download_whose_worker_died_is_requeued_and_held_for_the_queued_task(
    downloading, sent_downloads, django_capture_on_commit_callbacks
):
    worker_dies(downloading)

    result = reap(django_capture_on_commit_callbacks)

    assert result.as_dict() == {"requeued": 1, "failed": 0}
    assert sent_downloads == [{"ref_id": downloading.pk}]
    ref = TemplateStoreRef.objects.get(pk=downloading.pk)
    assert (ref.download_state, ref.state) == ("DOWNLOAD_IN_PROGRESS", "CREATING")
    assert ref.lease_owner.startswith(reaper.TOKEN_PREFIX)
    assert ref.lease_expires_at > timezone.now() + copies.lease_length() - timedelta(seconds=5)
    assert ref.attempts == 1, "the row is not touched but for the hold"
    (event,) = reaper_events(ref)
    assert "re-queued by the reaper (attempt 2 of 3)" in event.reason


def test_a_repeat_run_does_not_requeue_a_held_copy(
    downloading, sent_downloads, django_capture_on_commit_callbacks
):
    worker_dies(downloading)
    reap(django_capture_on_commit_callbacks)

    again = reap(django_capture_on_commit_callbacks)
    # Even once the hold ran out, the queued task gets a whole lease more before a re-queue.
    later = reap(
        django_capture_on_commit_callbacks, now=timezone.now() + copies.lease_length() * 1.5
    )

    assert again.as_dict() == later.as_dict() == {"requeued": 0, "failed": 0}
    assert len(sent_downloads) == 1
    assert reaper_events(downloading).count() == 1


def test_the_requeued_task_claims_the_copy_once_the_hold_runs_out(
    downloading, sent_downloads, django_capture_on_commit_callbacks
):
    worker_dies(downloading)
    reap(django_capture_on_commit_callbacks)
    ref = TemplateStoreRef.objects.get(pk=downloading.pk)
    assert tasks.lease_wait_seconds(ref) is not None, "the task comes back when the hold ends"

    worker_dies(ref)  # the hold ran out
    claimed = copies._claim(ref.pk, "next-worker")

    assert claimed is not None
    assert (claimed.lease_owner, claimed.attempts) == ("next-worker", 2)


def test_a_live_download_is_left_alone(downloading, sent_downloads):
    result = reaper.reap_expired()

    assert result.as_dict() == {"requeued": 0, "failed": 0}
    assert sent_downloads == []
    ref = TemplateStoreRef.objects.get(pk=downloading.pk)
    assert ref.lease_owner == downloading.lease_owner
    assert not reaper_events(ref).exists()


def test_after_n_attempts_the_download_ends_in_error(
    downloading, sent_downloads, settings, django_capture_on_commit_callbacks
):
    settings.STENCIL_STORE_COPY_MAX_ATTEMPTS = 3
    far = timezone.now()
    for _ in range(2):  # attempts 2 and 3 are re-queued; no worker ever takes them
        worker_dies(downloading)
        far += copies.lease_length() * 3
        assert reap(django_capture_on_commit_callbacks, now=far).requeued == 1
        # the queued task's claim takes the copy and its worker dies too
        ref = TemplateStoreRef.objects.get(pk=downloading.pk)
        TemplateStoreRef.objects.filter(pk=ref.pk).update(lease_owner="another-dead-worker")

    far += copies.lease_length() * 3
    result = reap(django_capture_on_commit_callbacks, now=far)

    assert result.as_dict() == {"requeued": 0, "failed": 1}
    assert len(sent_downloads) == 2
    ref = TemplateStoreRef.objects.get(pk=downloading.pk)
    assert (ref.download_state, ref.state, ref.lease_owner) == ("DOWNLOAD_ERROR", "ALLOCATED", "")
    assert ref.error_text == "no worker finished the download after 3 attempts"
    last = reaper_events(ref).first()
    assert (last.from_state, last.to_state) == ("DOWNLOAD_IN_PROGRESS", "DOWNLOAD_ERROR")
    assert reap(django_capture_on_commit_callbacks, now=far).as_dict() == {
        "requeued": 0,
        "failed": 0,
    }


def test_an_operator_retry_starts_the_count_again(
    downloading, sent_downloads, settings, admin_user, django_capture_on_commit_callbacks
):
    settings.STENCIL_STORE_COPY_MAX_ATTEMPTS = 2
    worker_dies(downloading)
    reap(django_capture_on_commit_callbacks)
    worker_dies(downloading, ago=copies.lease_length().total_seconds() + 5)
    reap(django_capture_on_commit_callbacks)  # attempt 2 of 2 found dead: DOWNLOAD_ERROR
    assert TemplateStoreRef.objects.get(pk=downloading.pk).download_state == "DOWNLOAD_ERROR"

    copies.store_copy_retry(ref_id=downloading.pk, actor=admin_user)
    copies._claim(downloading.pk, "fresh-worker")
    worker_dies(downloading)
    result = reap(django_capture_on_commit_callbacks)

    assert result.requeued == 1, "the retried download gets its own attempts"


def test_a_download_of_a_deleted_template_is_failed_not_requeued(downloading, sent_downloads):
    # Deleting cancels downloads; simulate a copy the cancel missed (its template INACTIVE).
    from templates_app.models import Template

    Template.objects.filter(pk=downloading.template_id).update(state="INACTIVE")
    worker_dies(downloading)

    result = reaper.reap_expired()

    assert result.as_dict() == {"requeued": 0, "failed": 1}
    assert sent_downloads == []
    ref = TemplateStoreRef.objects.get(pk=downloading.pk)
    assert ref.download_state == "DOWNLOAD_ERROR"
    assert "template is INACTIVE" in ref.error_text


def test_nothing_is_sent_from_a_rolled_back_reap(downloading, sent_downloads):
    worker_dies(downloading)
    with pytest.raises(RuntimeError), transaction.atomic():
        reaper.reap_expired()
        raise RuntimeError("rolled back")
    assert sent_downloads == []
    assert not TemplateStoreRef.objects.get(pk=downloading.pk).lease_owner.startswith("reaper")


def test_batches_are_bounded(register, sent_downloads, django_capture_on_commit_callbacks):
    refs = []
    for n in range(3):
        template = register(name=f"t{n}")
        ref = TemplateStoreRef.objects.get(template=template)
        refs.append(copies._claim(ref.pk, leases.new_owner()))
        worker_dies(ref)

    with django_capture_on_commit_callbacks(execute=True):
        first = reaper.reap_expired(batch_size=2)
    with django_capture_on_commit_callbacks(execute=True):
        second = reaper.reap_expired(batch_size=2)

    assert (first.requeued, second.requeued) == (2, 1)
    assert sorted(call["ref_id"] for call in sent_downloads) == sorted(r.pk for r in refs)


def test_the_beat_task_runs_the_reaper(downloading, sent_downloads):
    worker_dies(downloading)
    assert tasks.reap_expired_task.run() == {"requeued": 1, "failed": 0}


# Uploads ------------------------------------------------------------------------------------


def test_an_upload_whose_web_worker_died_is_upload_error_and_keeps_its_charge(api, zone, store):
    params = ask(api, zone, size=1000).data
    ref = died_mid_upload(params, lease_left=timedelta(seconds=-1))
    account = Account.objects.get(pk=ref.template.account_id)
    charged = account.used_secondary_bytes

    result = reaper.reap_expired()

    assert result.as_dict() == {"requeued": 0, "failed": 1}
    ref.refresh_from_db()
    assert (ref.download_state, ref.state, ref.lease_owner) == ("UPLOAD_ERROR", "ALLOCATED", "")
    assert ref.error_text == "the upload stopped (its web worker went away)"
    assert ref.charged_bytes == 1000
    account.refresh_from_db()
    assert account.used_secondary_bytes == charged, "kept until the upload URL expires"
    (event,) = reaper_events(ref)
    assert (event.from_state, event.to_state) == ("UPLOAD_IN_PROGRESS", "UPLOAD_ERROR")
    assert reaper.reap_expired().failed == 0, "a repeat is a no-op"

    # The expiry sweep then abandons it and releases the charge, as for any failed upload.
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        upload_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert abandon_expired_uploads() == 1
    account.refresh_from_db()
    assert account.used_secondary_bytes == charged - 1000


def test_a_live_upload_is_left_alone(api, zone, store):
    params = ask(api, zone, size=1000).data
    ref = died_mid_upload(params, lease_left=timedelta(seconds=60))

    assert reaper.reap_expired().failed == 0
    ref.refresh_from_db()
    assert (ref.download_state, ref.lease_owner) == ("UPLOAD_IN_PROGRESS", "dead-web-worker")
