"""VM pools (seed 002): stateless VMs of one lineage that users take and return.

A free pool VM is kept down (its deploy ends STOPPED), so a new version reaches it at once through
`rebuild_channel_followers`; a taken one keeps running its version until it is returned (stopped:
its disk is made again, on the channel's version when the pool follows one).
"""

from django.db import transaction

from templates_app.errors import InvalidInput, StencilError, TransitionConflict
from templates_app.events import record_event
from templates_app.models import Account, Zone

from . import services
from .choices import VmState
from .models import VirtualMachine, VmPool

MAX_POOL_SIZE = 100


class PoolExhausted(StencilError):
    """No free, stopped VM in the pool."""

    status_code = 409
    code = "pool_exhausted"


@transaction.atomic
def vm_pool_create(
    *,
    name: str,
    template_id: int,
    zone: Zone,
    account: Account,
    size: int,
    actor,
    use_latest_template_version: bool = False,
    follow_channel: str = "",
    memory_mib: int = 256,
    vcpus: int = 1,
) -> VmPool:
    """Create the pool and deploy its `size` stateless VMs (each ends STOPPED, free). With a
    channel (`follow_channel`, or 'latest' through `use_latest_template_version`) they follow
    it: the channel's checks are `vm_deploy`'s."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("a name is required", field="name")
    if not 1 <= size <= MAX_POOL_SIZE:
        raise InvalidInput(f"1 to {MAX_POOL_SIZE}", field="size")
    if VmPool.objects.filter(name=name).exists():
        raise InvalidInput(f"a VM pool named '{name}' exists", field="name")
    vm_pool = VmPool.objects.create(
        name=name,
        template_id=template_id,
        zone=zone,
        account=account,
        size=size,
        follow_channel=services.followed_channel(
            use_latest_template_version=use_latest_template_version,
            follow_channel=follow_channel,
        )[0],
    )
    record_event(vm_pool, from_state="", to_state="created", actor=actor, reason="created")
    for n in range(1, size + 1):
        vm = services.vm_deploy(
            name=f"{name}-{n}",
            template_id=template_id,
            zone=zone,
            account=account,
            actor=actor,
            memory_mib=memory_mib,
            vcpus=vcpus,
            stateless=True,
            follow_channel=vm_pool.follow_channel,
        )
        VirtualMachine.objects.filter(pk=vm.pk).update(vm_pool=vm_pool)
    return vm_pool


@transaction.atomic
def vm_pool_take(*, pool_id: int, user) -> VirtualMachine:
    """Give `user` a free stopped VM of the pool and start it; 409 when none is free."""
    VmPool.objects.select_for_update().get(pk=pool_id)  # takes of one pool queue up here
    vm = (
        VirtualMachine.objects.select_for_update(skip_locked=True)
        .filter(vm_pool_id=pool_id, taken_by__isnull=True, state=VmState.STOPPED)
        .order_by("id")
        .first()
    )
    if vm is None:
        raise PoolExhausted("no free VM in the pool: all are taken or still being made")
    vm.taken_by = user
    vm.save(update_fields=["taken_by", "updated_at"])
    record_event(vm, from_state=vm.state, to_state=vm.state, actor=user, reason="taken from pool")
    return services.vm_start(vm_id=vm.pk, actor=user)


@transaction.atomic
def vm_pool_return(*, vm_id: int, user) -> VirtualMachine:
    """Give a taken pool VM back: it is stopped (its disk changes are discarded, and with
    'latest' it moves to the newest version) and free again."""
    vm = VirtualMachine.objects.get(pk=vm_id)
    if vm.vm_pool_id is None or vm.taken_by_id is None:
        raise TransitionConflict(vm, "return", reason="only a taken pool VM is returned")
    if vm.taken_by_id != user.pk and not getattr(user, "is_staff", False):
        raise TransitionConflict(vm, "return", reason="another user took it")
    if vm.state in (VmState.RUNNING, VmState.STARTING):
        vm = services.vm_stop(vm_id=vm.pk, actor=user)
    VirtualMachine.objects.filter(pk=vm.pk).update(taken_by=None)
    record_event(vm, from_state=vm.state, to_state=vm.state, actor=user, reason="returned to pool")
    vm.refresh_from_db()
    return vm
