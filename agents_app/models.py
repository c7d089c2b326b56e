"""Virtual machines. A VM that is not EXPUNGED is a live reference to its template."""

import uuid as uuid_lib

from django.db import models
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from templates_app.models import Account, Template, Zone

from .choices import VmState

LIVE_STATES = [VmState.STARTING, VmState.RUNNING, VmState.STOPPED]


class VirtualMachine(ConcurrentTransitionMixin, models.Model):
    """A VM record. Hosts, disks and libvirt arrive with the agents issue."""

    uuid = models.UUIDField(default=uuid_lib.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=128)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="vms")
    template = models.ForeignKey(Template, on_delete=models.PROTECT, related_name="vms")
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="vms")
    state = FSMField(
        max_length=16, choices=VmState.choices, default=VmState.STOPPED, protected=True
    )
    destroyed_at = models.DateTimeField(null=True, blank=True)
    expunged_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["template", "state"], name="vm_template_state_idx")]

    def __str__(self) -> str:
        return self.name

    @transition(field=state, source=[VmState.STOPPED], target=VmState.RUNNING)
    def start(self) -> None:
        """Power on (record only until agents run it)."""

    @transition(field=state, source=[VmState.RUNNING, VmState.STARTING], target=VmState.STOPPED)
    def stop(self) -> None:
        """Power off."""

    @transition(field=state, source=LIVE_STATES, target=VmState.DESTROYED)
    def destroy(self) -> None:
        """Destroyed but recoverable: still holds its template."""

    @transition(field=state, source=VmState.DESTROYED, target=VmState.STOPPED)
    def recover(self) -> None:
        """Bring a destroyed VM back, stopped."""

    @transition(field=state, source=VmState.DESTROYED, target=VmState.EXPUNGED)
    def expunge(self) -> None:
        """Gone for good: no longer a reference."""
