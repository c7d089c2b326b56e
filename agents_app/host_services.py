"""Operator actions on KVM hosts (maintenance on and off) and beat's heartbeat check.

A host in MAINTENANCE gets no new deploys or pool copies (both pick Up hosts only) and its
heartbeats no longer bring it Up; leaving maintenance makes it DISCONNECTED until the agent's
next heartbeat.
"""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone
from django_fsm import can_proceed

from templates_app.errors import TransitionConflict
from templates_app.events import record_event

from .choices import HostState
from .models import Host


def _lock_host(host_id: int) -> Host:
    return Host.objects.select_for_update().get(pk=host_id)


def _transition(host_id: int, action: str, *, actor, reason: str) -> Host:
    host = _lock_host(host_id)
    method = getattr(host, action)
    if not can_proceed(method):
        raise TransitionConflict(host, action.replace("_", " "))
    before = host.state
    method()
    host.save(update_fields=["state", "updated_at"])
    record_event(host, from_state=before, to_state=host.state, actor=actor, reason=reason)
    return host


@transaction.atomic
def host_enter_maintenance(*, host_id: int, actor) -> Host:
    """Take a host out of service (from Up, Down or Disconnected); 409 when already in it."""
    return _transition(host_id, "enter_maintenance", actor=actor, reason="maintenance on")


@transaction.atomic
def host_leave_maintenance(*, host_id: int, actor) -> Host:
    """Put a host back in service: DISCONNECTED until its agent's next heartbeat."""
    return _transition(host_id, "leave_maintenance", actor=actor, reason="maintenance off")


def hosts_mark_down(*, missed_after_seconds: int) -> int:
    """Beat: hosts whose last heartbeat is older than the limit go Down."""
    limit = timezone.now() - timedelta(seconds=missed_after_seconds)
    stale = Host.objects.filter(state=HostState.UP, last_heartbeat_at__lt=limit)
    count = 0
    for host_id in stale.values_list("pk", flat=True):
        with transaction.atomic():
            host = Host.objects.select_for_update().get(pk=host_id)
            if host.state == HostState.UP and host.last_heartbeat_at < limit:
                host.miss_heartbeats()
                host.save()
                record_event(
                    host,
                    from_state=HostState.UP,
                    to_state=host.state,
                    actor_label="heartbeat-check",
                    reason="missed heartbeats",
                )
                count += 1
    return count
