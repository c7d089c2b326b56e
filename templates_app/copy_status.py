"""What an operator looks for among copies (store copies here, pool copies in compute): the
failed ones, those in progress, and the stuck ones, i.e. in progress while their worker's lease
ran out or with no progress for STENCIL_COPY_STUCK_AFTER_SECONDS.

One rule for the API's `?status=` filters and the admin's list filter of both kinds of copy.
"""

from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone


class CopyStatus(models.TextChoices):
    FAILED = "failed", "Failed"
    IN_PROGRESS = "in_progress", "In progress"
    STUCK = "stuck", "Stuck"


def stuck_after() -> timedelta:
    return timedelta(seconds=settings.STENCIL_COPY_STUCK_AFTER_SECONDS)


def stuck_q(*, now: datetime | None = None) -> Q:
    """A row in progress is stuck when its lease is gone or expired, or it has not moved for a
    while (`updated_at`: progress writes touch it)."""
    now = now or timezone.now()
    return (
        Q(lease_expires_at__isnull=True)
        | Q(lease_expires_at__lte=now)
        | Q(updated_at__lte=now - stuck_after())
    )


def filter_by_status(
    queryset: QuerySet,
    status: str,
    *,
    field: str,
    failed: Sequence[str],
    in_progress: Sequence[str],
    now: datetime | None = None,
) -> QuerySet:
    """The rows of `queryset` with `status` (a CopyStatus value), judged on the state `field`."""
    if status == CopyStatus.FAILED:
        return queryset.filter(**{f"{field}__in": list(failed)})
    working = queryset.filter(**{f"{field}__in": list(in_progress)})
    if status == CopyStatus.IN_PROGRESS:
        return working
    if status == CopyStatus.STUCK:
        return working.filter(stuck_q(now=now))
    raise ValueError(f"unknown copy status {status!r}")
