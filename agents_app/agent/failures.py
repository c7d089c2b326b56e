"""Nothing stays stuck: a host task that raises records the failure on the object it concerns.

`@fails_into(record)` wraps a task body: any exception that escapes it is logged with its
traceback and handed to `record` (with the task's arguments, by name), which writes it on the
object (a VM into ERROR, a host certificate FAILED, ...) as "<ExceptionType>: <message>". The
task then returns a short "failed: ..." answer instead of raising: the object carries the error.
Expected failures (libvirt, qemu-img, downloads) are handled where they happen, with their own
messages; this is the net for everything else.
"""

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django_fsm import can_proceed

from templates_app.events import record_event

from ..choices import VmState
from ..models import VirtualMachine
from .claims import VmBusy

logger = logging.getLogger(__name__)

Recorder = Callable[[dict[str, Any], str], None]


def describe(exc: BaseException) -> str:
    """The text an unexpected exception leaves on its object."""
    message = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {message}"


def _failed(text: str) -> str:
    return f"failed: {text}"


def fails_into(record: Recorder, *, answer: Callable[[str], Any] = _failed):
    """Decorate a task body so that any exception ends in `record(arguments, text)`; the task
    returns `answer(text)`. VmBusy is not a failure: it passes (the task retries later)."""

    def decorate(body):
        signature = inspect.signature(body)

        @functools.wraps(body)
        def run(*args, **kwargs):
            try:
                return body(*args, **kwargs)
            except VmBusy:
                raise
            except Exception as exc:
                arguments = signature.bind(*args, **kwargs).arguments
                text = describe(exc)
                logger.exception("%s(%s) failed: %s", body.__name__, arguments, text)
                try:
                    record(arguments, text)
                except Exception:
                    # The database itself may be what failed; the traceback above says why.
                    logger.exception("%s: could not record the failure", body.__name__)
                return answer(text)

        return run

    return decorate


def vm_failure(action: str, *, into_error: bool) -> Recorder:
    """Record on the task's VM (`vm_id`): into ERROR when the domain's state is unknown after
    the failure (`into_error`), else the VM keeps its state; error_text says what failed."""

    def record(arguments: dict[str, Any], text: str) -> None:
        vm_failed(
            arguments["vm_id"], f"{action}: {text}" if action else text, into_error=into_error
        )

    return record


def vms_failure(action: str, *, into_error: bool) -> Recorder:
    """vm_failure for a task of several VMs (`vm_ids`): recorded on those still STARTING
    (the others' results were recorded before the failure)."""

    def record(arguments: dict[str, Any], text: str) -> None:
        starting = VirtualMachine.objects.filter(
            pk__in=arguments["vm_ids"], state=VmState.STARTING
        ).values_list("pk", flat=True)
        for vm_id in starting:
            vm_failed(vm_id, f"{action}: {text}" if action else text, into_error=into_error)

    return record


@transaction.atomic
def vm_failed(vm_id: int, reason: str, *, into_error: bool) -> VirtualMachine | None:
    """Write a host task's failure on the VM (and into ERROR where its FSM allows it)."""
    vm = VirtualMachine.objects.select_for_update(of=("self",)).filter(pk=vm_id).first()
    if vm is None:
        return None
    before = vm.state
    # A deploy that fails leaves nothing to start: ERROR whatever the caller asked.
    if (into_error or vm.state == VmState.STARTING) and can_proceed(vm.mark_error):
        vm.mark_error()
    vm.error_text = reason[:4000]
    vm.awaited_copy_id = None
    vm.save(update_fields=["state", "error_text", "awaited_copy", "updated_at"])
    record_event(vm, from_state=before, to_state=vm.state, actor_label="agent", reason=reason)
    return vm


def logged_only(arguments: dict[str, Any], text: str) -> None:
    """For tasks that leave no object in progress (checks, reports): the log is the record."""
