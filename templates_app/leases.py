"""One lease mechanism for work that outlives a transaction: claim, renew, take over, release.

A row someone works on (a store copy's download or upload, a pool copy) carries `lease_owner`
and `lease_expires_at`. The worker claims the lease under the row's lock, together with the
state change that starts the work; it renews the lease while it works (a `LeaseKeeper` thread,
or with each progress write); it releases it in the transaction that records the result. Only
the owner may renew, finish or fail the work. A lease that runs out means its worker died: the
next attempt takes the row over. A worker that finds its lease gone (`renew` answered False)
stops, and never deletes what the new owner writes.
"""

import threading
import uuid
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Model
from django.utils import timezone


def new_owner() -> str:
    """A token naming one attempt of one worker."""
    return uuid.uuid4().hex


def lease_is_free(row: Model, *, now: datetime | None = None) -> bool:
    """Nobody holds the row, or its holder's lease ran out (the holder died)."""
    if not row.lease_owner or row.lease_expires_at is None:
        return True
    return row.lease_expires_at <= (now or timezone.now())


def lease_claim(row: Model, owner: str, length: timedelta) -> None:
    """Give the (locked) row to `owner` for `length`; the caller saves it."""
    row.lease_owner = owner
    row.lease_expires_at = timezone.now() + length


def lease_release(row: Model) -> None:
    """The work is over (done or failed); the caller saves the row."""
    row.lease_owner = ""
    row.lease_expires_at = None


def lease_renew(model: type[Model], pk: int, owner: str, length: timedelta, **updates) -> bool:
    """Push the lease out by `length` (with `updates`, e.g. progress) if `owner` still holds it.

    One UPDATE, no lock held: False means another worker took the row over."""
    now = timezone.now()
    renewed = model.objects.filter(pk=pk, lease_owner=owner).update(
        lease_expires_at=now + length, **updates
    )
    return renewed == 1


class LeaseKeeper:
    """Renews a lease every third of its length while long work runs (`with LeaseKeeper(...)`),
    so only a dead worker's lease runs out. `lost` is set when another worker took over."""

    def __init__(self, model: type[Model], pk: int, owner: str, length: timedelta):
        self.model, self.pk, self.owner, self.length = model, pk, owner, length
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._renew, daemon=True)

    def _renew(self) -> None:
        try:
            while not self.stop.wait(self.length.total_seconds() / 3):
                if not lease_renew(self.model, self.pk, self.owner, self.length):
                    self.lost.set()
                    return
        finally:
            connection.close()  # this thread's own connection

    def __enter__(self) -> "LeaseKeeper":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()
