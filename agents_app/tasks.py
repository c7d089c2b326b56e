"""Management-side tasks of compute (beat entries and follow-ups): thin wrappers over services.

The tasks of a host's own queue live in agents_app.agent.tasks (imported here so that every
worker that autodiscovers this module knows them).
"""

from celery import shared_task
from django.conf import settings

from .agent import tasks as host_tasks  # noqa: F401  (registers the host-queue tasks)
from .followers import rebuild_channel_followers, rebuild_latest_followers
from .host_services import hosts_mark_down
from .pool_copies import pool_copies_evict


@shared_task(name="agents_app.tasks.hosts_mark_down_task")
def hosts_mark_down_task() -> int:
    """Beat: hosts that missed their heartbeats go Down."""
    return hosts_mark_down(missed_after_seconds=settings.STENCIL_HOST_DOWN_AFTER_SECONDS)


@shared_task(name="agents_app.tasks.rebuild_latest_followers_task", acks_late=True)
def rebuild_latest_followers_task(base_template_id: int) -> int:
    """A version became usable: rebuild the stopped stateless VMs that follow 'latest'."""
    return rebuild_latest_followers(base_template_id=base_template_id)


@shared_task(name="agents_app.tasks.rebuild_channel_followers_task", acks_late=True)
def rebuild_channel_followers_task(base_template_id: int, channel: str) -> int:
    """A channel moved: rebuild the stopped stateless VMs that follow it."""
    return rebuild_channel_followers(base_template_id=base_template_id, channel=channel)


@shared_task(name="agents_app.tasks.pool_copies_evict_task")
def pool_copies_evict_task() -> dict:
    """Beat: evict unused cached pool copies (marked on one run, deleted on a later one)."""
    return pool_copies_evict()


@shared_task(name="agents_app.tasks.reap_expired_task")
def reap_expired_task() -> dict:
    """Beat: pool copies, VM deploys and rebuilds, and certificate installs past their lease or
    deadline are failed (or re-queued once, for certificates)."""
    from .reaper import reap_expired

    return reap_expired().as_dict()
