"""At-most-once host work on a VM: the host task claim (`VirtualMachine.host_task_*`).

A broker can deliver a task twice (Redis after its visibility timeout, any broker after a
worker's connection drops). Before a host task touches libvirt it claims the VM in one short
transaction: a token, the task's name and an expiry. A second delivery that meets a live claim
returns at once, touching nothing and marking nothing. While the work runs the claim is renewed
(every third of its length, by a thread), so only a dead holder's claim runs out; the next
delivery then takes it over. The claim is given back once the task's result is recorded.
"""

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from templates_app import leases

from ..models import VirtualMachine

logger = logging.getLogger(__name__)


# Seconds past a live claim's end before a deferred task tries again (clock slack).
RETRY_MARGIN_SECONDS = 2


class VmBusy(Exception):
    """Another host task (of another kind) holds the VM: the caller's task tries again in
    `countdown` seconds, when that claim is given back or has run out."""

    def __init__(self, vm_id: int, holder: str, countdown: float):
        super().__init__(f"VM {vm_id} is busy with {holder}; again in {countdown:.0f} s")
        self.vm_id, self.holder, self.countdown = vm_id, holder, countdown


def claim_length() -> timedelta:
    return timedelta(seconds=settings.STENCIL_HOST_TASK_CLAIM_SECONDS)


def claim_is_live(vm: VirtualMachine, *, now=None) -> bool:
    """Some host task attempt holds the VM and has renewed its claim in time."""
    return bool(vm.host_task_token) and (
        vm.host_task_expires_at is not None and vm.host_task_expires_at > (now or timezone.now())
    )


# What a host task meets on the VM it wants to claim.
FREE, BUSY, DUPLICATE = "free", "busy", "duplicate"


def _claim_verdict(vm: VirtualMachine, task: str, now) -> str:
    """FREE: no live claim (a run-out one is taken over); BUSY: a live claim of another kind
    of task; DUPLICATE: a live claim of `task` itself (another delivery's: nothing to do)."""
    if claim_is_live(vm, now=now):
        if vm.host_task_name != task:
            return BUSY
        logger.info("VM %s: duplicate %s skipped, another attempt holds the claim", vm.pk, task)
        return DUPLICATE
    if vm.host_task_token:
        logger.warning(
            "VM %s: %s takes over the run-out claim of %s", vm.pk, task, vm.host_task_name
        )
    return FREE


@transaction.atomic
def vm_claim(vm_id: int, task: str) -> str | None:
    """Claim the VM for `task`: the new token, or None while another attempt of the same task
    holds a live claim (a duplicate delivery: it has nothing to do). VmBusy while a task of
    another kind holds it: host work on one VM runs one task at a time."""
    vm = VirtualMachine.objects.select_for_update(of=("self",)).get(pk=vm_id)
    now = timezone.now()
    verdict = _claim_verdict(vm, task, now)
    if verdict == BUSY:
        left = (vm.host_task_expires_at - now).total_seconds()
        raise VmBusy(vm_id, vm.host_task_name, left + RETRY_MARGIN_SECONDS)
    if verdict == DUPLICATE:
        return None
    token = leases.new_owner()
    vm.host_task_token, vm.host_task_name = token, task
    vm.host_task_expires_at = timezone.now() + claim_length()
    vm.save(
        update_fields=["host_task_token", "host_task_name", "host_task_expires_at", "updated_at"]
    )
    return token


def vm_claim_release(vm_id: int, token: str) -> None:
    """Give the claim back (only its holder can). updated_at moves too: the heartbeat's
    reconcile leaves a VM a host task has just worked on alone for a while."""
    VirtualMachine.objects.filter(pk=vm_id, host_task_token=token).update(
        host_task_token="", host_task_name="", host_task_expires_at=None, updated_at=timezone.now()
    )


# Claims given back by the transaction that recorded their task's result (vm_claim_give_back);
# vm_claimed's exit then has nothing left to write. Tokens are unique, so one set serves all
# threads (set.add and set.discard are atomic).
_given_back: set[str] = set()


def vm_claim_give_back(vm: VirtualMachine, token: str | None) -> None:
    """Clear the claim on `vm` (locked and about to be saved by the caller, in the transaction
    that records the task's result): one write and one commit fewer per task. Only its holder
    can; once that transaction commits, vm_claimed's exit skips its own release."""
    if vm_claim_clear(vm, token):
        transaction.on_commit(lambda: _given_back.add(token))


def vm_claim_clear(vm: VirtualMachine, token: str | None) -> bool:
    """Clear the claim's fields on `vm` (the caller saves it) if `token` holds it."""
    if not token or vm.host_task_token != token:
        return False
    vm.host_task_token, vm.host_task_name, vm.host_task_expires_at = "", "", None
    return True


def live_claim_q(now=None) -> Q:
    """VMs a host task is working on now."""
    return ~Q(host_task_token="") & Q(host_task_expires_at__gt=now or timezone.now())


class _ClaimKeeper(leases.LeaseKeeper):
    """A LeaseKeeper for the host task claim fields of one token's VMs (one for vm_claimed,
    a batch for vms_claimed); lost when the token holds none of them any more."""

    def __init__(self, pks: list[int], owner: str, length: timedelta):
        super().__init__(VirtualMachine, 0, owner, length)
        self.pks = pks

    def _renew(self) -> None:
        from django.db import connection

        try:
            while not self.stop.wait(self.length.total_seconds() / 3):
                renewed = VirtualMachine.objects.filter(
                    pk__in=self.pks, host_task_token=self.owner
                ).update(host_task_expires_at=timezone.now() + self.length)
                if not renewed:
                    self.lost.set()
                    return
        finally:
            connection.close()  # this thread's own connection


@contextlib.contextmanager
def vm_claimed(vm_id: int, task: str) -> Iterator[str | None]:
    """`with vm_claimed(vm.pk, "deploy") as token:` — None: another attempt of this task holds
    the VM, do nothing (VmBusy: one of another kind does). Otherwise the claim is renewed while
    the block runs and given back after it (the block records its result first)."""
    token = vm_claim(vm_id, task)
    if token is None:
        yield None
        return
    try:
        with _ClaimKeeper([vm_id], token, claim_length()):
            yield token
    finally:
        if token in _given_back:
            _given_back.discard(token)
        else:
            vm_claim_release(vm_id, token)


@transaction.atomic
def _vms_claim(vm_ids: list[int], task: str, token: str) -> tuple[list[int], list[int]]:
    """vm_claim for several VMs in one transaction, with one token: (claimed, busy). Busy: a
    live claim of another kind of task holds the VM. A live claim of `task` itself is a
    duplicate delivery's, and the VM is in neither list."""
    now = timezone.now()
    vms = VirtualMachine.objects.select_for_update(of=("self",)).filter(pk__in=vm_ids)
    claimed, busy = [], []
    for vm in vms.order_by("pk"):
        verdict = _claim_verdict(vm, task, now)
        if verdict == FREE:
            claimed.append(vm.pk)
        elif verdict == BUSY:
            busy.append(vm.pk)
    VirtualMachine.objects.filter(pk__in=claimed).update(
        host_task_token=token,
        host_task_name=task,
        host_task_expires_at=now + claim_length(),
        updated_at=now,
    )
    return claimed, busy


@contextlib.contextmanager
def vms_claimed(vm_ids: list[int], task: str) -> Iterator[tuple[str, list[int], list[int]]]:
    """vm_claimed for a batch of VMs (the deploys a pool copy's finish woke): one claiming
    transaction and one renewing thread for all. Yields (token, claimed ids, busy ids); the
    claims still held by the token are given back on exit, in one statement (the block
    gives back those whose results it recorded with vm_claim_clear)."""
    token = leases.new_owner()
    claimed, busy = _vms_claim(vm_ids, task, token)
    try:
        with _ClaimKeeper(claimed, token, claim_length()):
            yield token, claimed, busy
    finally:
        VirtualMachine.objects.filter(pk__in=claimed, host_task_token=token).update(
            host_task_token="",
            host_task_name="",
            host_task_expires_at=None,
            updated_at=timezone.now(),
        )
