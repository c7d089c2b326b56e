"""Async jobs: an async command writes its state change and its job row in one transaction and
answers `{jobid, id}`. No worker polls anything: a job's status is computed, when asked, by
the resolver its command registered, from the target's state (a VM STARTING is pending,
RUNNING succeeded, ERROR failed), and stored once final."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone

from .errors import CLOUD_RUNTIME_EXCEPTION, INTERNAL_ERROR
from .models import AsyncJob, AsyncJobStatus
from .responses import cs_date


@dataclass(frozen=True)
class AsyncStart:
    """What an async handler answers: the object the job is about."""

    target: models.Model
    instance_type: str
    context: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JobOutcome:
    status: int
    result: dict
    result_code: int = 0

    @classmethod
    def success(cls, result: dict) -> "JobOutcome":
        return cls(AsyncJobStatus.SUCCEEDED, result)

    @classmethod
    def failure(cls, text: str) -> "JobOutcome":
        body = {
            "errorcode": INTERNAL_ERROR,
            "cserrorcode": CLOUD_RUNTIME_EXCEPTION,
            "errortext": text,
        }
        return cls(AsyncJobStatus.FAILED, body, INTERNAL_ERROR)


# Resolver: (job, its target re-read) -> JobOutcome, or None while it is pending.
Resolver = Callable[[AsyncJob, Any], JobOutcome | None]
_RESOLVERS: dict[str, Resolver] = {}


def register_resolver(command: str, resolver: Resolver) -> None:
    _RESOLVERS[command.lower()] = resolver


def job_create(*, user, command: str, start: AsyncStart) -> AsyncJob:
    """Call inside the transaction of the command's state change."""
    return AsyncJob.objects.create(
        user=user,
        command=command,
        content_type=ContentType.objects.get_for_model(start.target),
        object_id=start.target.pk,
        instance_uuid=start.target.uuid,
        instance_type=start.instance_type,
        context=start.context,
    )


def job_refresh(job: AsyncJob) -> AsyncJob:
    """Compute a pending job's status from its target; store it once final."""
    if job.status != AsyncJobStatus.PENDING:
        return job
    model = job.content_type.model_class()
    target = model.objects.filter(pk=job.object_id).first()
    if target is None:
        outcome = JobOutcome.failure(f"the {job.instance_type} of this job no longer exists")
    else:
        outcome = _RESOLVERS[job.command.lower()](job, target)
    if outcome is None:
        return job
    job.status, job.result, job.result_code = outcome.status, outcome.result, outcome.result_code
    job.finished_at = timezone.now()
    AsyncJob.objects.filter(pk=job.pk, status=AsyncJobStatus.PENDING).update(
        status=job.status,
        result=job.result,
        result_code=job.result_code,
        finished_at=job.finished_at,
    )
    return job


def job_response(job: AsyncJob) -> dict:
    """queryAsyncJobResult's answer (CloudStack's AsyncJobResponse)."""
    body = {
        "jobid": str(job.uuid),
        "userid": str(job.user_id),
        "cmd": job.command,
        "created": cs_date(job.created_at),
        "jobinstancetype": job.instance_type,
        "jobinstanceid": str(job.instance_uuid),
        "jobstatus": job.status,
        "jobprocstatus": 0,
        "jobresultcode": job.result_code,
    }
    if job.status != AsyncJobStatus.PENDING:
        body["jobresulttype"] = "object"
        body["jobresult"] = job.result
        body["completed"] = cs_date(job.finished_at)
    return body
