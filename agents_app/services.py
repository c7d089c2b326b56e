"""VM record life cycle. Creating a VM takes its template's row lock: it cannot race the sweep."""

from django.db import transaction
from django.utils import timezone
from django_fsm import can_proceed

from templates_app.choices import TemplateState
from templates_app.errors import InvalidInput, TemplateNotUsable, TransitionConflict
from templates_app.events import record_event
from templates_app.locks import lock_template
from templates_app.models import Account, Zone
from templates_app.selectors import template_in_zone

from .models import VirtualMachine


def _lock_vm(vm_id: int) -> VirtualMachine:
    return VirtualMachine.objects.select_for_update().get(pk=vm_id)


@transaction.atomic
def vm_create(
    *, name: str, template_id: int, zone: Zone, account: Account, actor
) -> VirtualMachine:
    """Create a VM on an ACTIVE template; the state check and the new reference share one lock."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("a name is required", field="name")
    template = lock_template(template_id)
    if template.state != TemplateState.ACTIVE:
        raise TemplateNotUsable(template)
    if not template_in_zone(template, zone):
        raise InvalidInput(f"template '{template}' is not available in zone '{zone}'", field="zone")
    vm = VirtualMachine.objects.create(name=name, template=template, zone=zone, account=account)
    record_event(vm, from_state="", to_state=vm.state, actor=actor, reason="created")
    return vm


def _transition(vm_id: int, action: str, *, actor, reason: str = "") -> VirtualMachine:
    vm = _lock_vm(vm_id)
    method = getattr(vm, action)
    if not can_proceed(method):
        raise TransitionConflict(vm, action)
    before = vm.state
    method()
    now = timezone.now()
    if action == "destroy":
        vm.destroyed_at = now
    if action == "expunge":
        vm.expunged_at = now
    if action == "recover":
        vm.destroyed_at = None
    vm.save()
    record_event(vm, from_state=before, to_state=vm.state, actor=actor, reason=reason or action)
    return vm


@transaction.atomic
def vm_start(*, vm_id: int, actor) -> VirtualMachine:
    """Existing VMs keep working whatever their template's state (seed 000)."""
    return _transition(vm_id, "start", actor=actor)


@transaction.atomic
def vm_stop(*, vm_id: int, actor) -> VirtualMachine:
    return _transition(vm_id, "stop", actor=actor)


@transaction.atomic
def vm_destroy(*, vm_id: int, actor, expunge: bool = False) -> VirtualMachine:
    """Destroy (recoverable; still a reference), or destroy and expunge at once."""
    vm = _transition(vm_id, "destroy", actor=actor)
    if expunge:
        vm = _expunge(vm.pk, actor=actor)
    return vm


@transaction.atomic
def vm_recover(*, vm_id: int, actor) -> VirtualMachine:
    return _transition(vm_id, "recover", actor=actor)


def _expunge(vm_id: int, *, actor) -> VirtualMachine:
    vm = _transition(vm_id, "expunge", actor=actor)
    if vm.template.state == TemplateState.INACTIVE:
        from templates_app.tasks import gc_sweep_task

        template_id = vm.template_id
        transaction.on_commit(lambda: gc_sweep_task.delay(template_ids=[template_id]))
    return vm


@transaction.atomic
def vm_expunge(*, vm_id: int, actor) -> VirtualMachine:
    """Expunge a destroyed VM; if it was the last reference of an INACTIVE template, sweep it."""
    return _expunge(vm_id, actor=actor)
