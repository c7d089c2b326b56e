"""Tasks of a host's own queue `host.<name>`, run by its agent (`manage.py run_agent`): thin
wrappers over the host-side services of this package.

Nothing stays stuck: each body is wrapped in `fails_into`, so an exception that escapes the
service is logged with its traceback and recorded on the object the task concerns. A VM task
meeting another host task's live claim on the VM (claims.VmBusy) is retried when that claim
ends; a duplicate delivery of the same task returns quietly (agents_app.agent.claims).
"""

import functools
from typing import Any

from celery import shared_task

from . import vms
from .claims import VmBusy
from .direct_download import url_check, url_verify
from .failures import fails_into, logged_only, vm_failure, vms_failure
from .pool_copies import (
    PoolCopyFailed,
    PoolCopyInProgress,
    pool_copy_delete_on_host,
    pool_copy_ensure,
    pool_reconcile,
)
from .trust import (
    ca_dir_for,
    certificate_install_on_host,
    certificate_remove_on_host,
    host_certificate_failed,
)


def retried_when_busy(body):
    """A bound VM task whose VM another host task holds tries again when that claim ends."""

    @functools.wraps(body)
    def run(self, *args, **kwargs):
        try:
            return body(self, *args, **kwargs)
        except VmBusy as exc:
            raise self.retry(exc=exc, countdown=exc.countdown, max_retries=None) from exc

    return run


def _certificate_failure(arguments: dict[str, Any], text: str) -> None:
    host_certificate_failed(
        host_name=arguments["host_name"], certificate_id=arguments["certificate_id"], reason=text
    )


def _pool_copy_evict_failure(arguments: dict[str, Any], text: str) -> None:
    """The copy stays EVICTING (the next sweep sends its eviction again), with the reason."""
    from ..models import TemplatePoolRef

    TemplatePoolRef.objects.filter(pk=arguments["ref_id"]).update(error_text=f"evict: {text}")


def _no_answer(text: str) -> dict:
    return {"ok": False, "error": text}


# ignore_result: a deploy's outcome is the VM's state, error text and events; storing the
# returned state as a task result row too cost the agent one more write and commit per deploy.
@shared_task(
    name="agents_app.agent.tasks.vm_deploy_task", acks_late=True, bind=True, ignore_result=True
)
@retried_when_busy
@fails_into(vm_failure("", into_error=True))
def vm_deploy_task(self, vm_id: int, waited_for_attempt: int | None = None) -> str:
    """Make the disk, define and start the domain; a repeat after success does nothing.
    A VM that must wait for a pool copy stays STARTING; the copy re-queues this task."""
    return vms.vm_deploy_on_host(vm_id=vm_id, waited_for_attempt=waited_for_attempt).state


@shared_task(
    name="agents_app.agent.tasks.vm_deploys_woken_task", acks_late=True, ignore_result=True
)
@fails_into(vms_failure("", into_error=True))
def vm_deploys_woken_task(vm_ids: list[int]) -> int:
    """The deploys on this host that a pool copy's finish woke, in one pass; how many were
    deployed (a VM another host task holds is handed to its own vm_deploy_task)."""
    return len(vms.vm_deploys_woken_on_host(vm_ids=vm_ids))


@shared_task(name="agents_app.agent.tasks.pool_copy_waiter_recheck_task", acks_late=True, bind=True)
@retried_when_busy
@fails_into(vm_failure("", into_error=False))
def pool_copy_waiter_recheck_task(self, vm_id: int) -> str:
    """At the end of the awaited copy's lease: if its worker died, the waiter takes it over."""
    return vms.vm_copy_wait_recheck(vm_id=vm_id).state


@shared_task(name="agents_app.agent.tasks.vm_sync_domain_task", acks_late=True, bind=True)
@retried_when_busy
@fails_into(vm_failure("sync", into_error=True))
def vm_sync_domain_task(
    self,
    vm_id: int,
    delete_snapshot_metadata: bool = False,
    delete_managed_save: bool = False,
    rebuild: bool = False,
) -> str:
    """Start/stop/undefine the domain to match the VM's state (idempotent); with rebuild, a
    stopped stateless VM's root disk is made again from its template."""
    return vms.vm_sync_domain(
        vm_id=vm_id,
        delete_snapshot_metadata=delete_snapshot_metadata,
        delete_managed_save=delete_managed_save,
        rebuild=rebuild,
    ).state


@shared_task(name="agents_app.agent.tasks.vm_rebuild_task", acks_late=True, bind=True)
@retried_when_busy
@fails_into(vm_failure("rebuild", into_error=True))
def vm_rebuild_task(self, vm_id: int, waited_for_attempt: int | None = None) -> str:
    """Make a stopped VM's root disk again from its template and redefine its domain."""
    return vms.vm_rebuild_on_host(vm_id=vm_id, waited_for_attempt=waited_for_attempt).state


@shared_task(name="agents_app.agent.tasks.vm_snapshot_task", acks_late=True, bind=True)
@retried_when_busy
@fails_into(vm_failure("snapshot", into_error=False))
def vm_snapshot_task(self, vm_id: int, action: str, name: str, description: str = "") -> None:
    """Create, revert or delete a snapshot on the VM's host."""
    vms.vm_snapshot_on_host(vm_id=vm_id, action=action, name=name, description=description)


@shared_task(name="agents_app.agent.tasks.pool_copy_task", acks_late=True)
@fails_into(logged_only)
def pool_copy_task(
    template_id: int, pool_id: int, libvirt_uri: str, host_name: str | None = None
) -> str:
    """Pre-populate a template onto a pool (single flight: a copy already there is kept, and a
    copy another worker is making is left to it)."""
    try:
        return pool_copy_ensure(
            template_id=template_id, pool_id=pool_id, libvirt_uri=libvirt_uri, host_name=host_name
        ).state
    except PoolCopyInProgress as exc:
        return f"in progress: {exc.message}"
    except PoolCopyFailed as exc:
        return f"failed: {exc.message}"


@shared_task(name="agents_app.agent.tasks.pool_copy_evict_task", acks_late=True)
@fails_into(_pool_copy_evict_failure)
def pool_copy_evict_task(ref_id: int, libvirt_uri: str) -> bool:
    """Delete an evicted copy's volume and row (idempotent)."""
    return pool_copy_delete_on_host(ref_id=ref_id, libvirt_uri=libvirt_uri)


@shared_task(name="agents_app.agent.tasks.vm_reboot_task", acks_late=True, bind=True)
@retried_when_busy
@fails_into(vm_failure("reboot", into_error=False))
def vm_reboot_task(self, vm_id: int) -> str:
    return vms.vm_reboot_on_host(vm_id=vm_id).state


@shared_task(name="agents_app.agent.tasks.pool_reconcile_task")
@fails_into(logged_only)
def pool_reconcile_task(pool_id: int, libvirt_uri: str) -> dict:
    """Flag copies whose files vanished; report unknown files (see the task result)."""
    return pool_reconcile(pool_id=pool_id, libvirt_uri=libvirt_uri)


@shared_task(name="agents_app.agent.tasks.certificate_install_task", acks_late=True)
@fails_into(_certificate_failure)
def certificate_install_task(host_name: str, certificate_id: int) -> str:
    """Put a direct-download certificate into this host's trust directory (idempotent)."""
    row = certificate_install_on_host(host_name=host_name, certificate_id=certificate_id)
    return row.state if row is not None else "skipped"


@shared_task(name="agents_app.agent.tasks.certificate_remove_task", acks_late=True)
@fails_into(_certificate_failure)
def certificate_remove_task(host_name: str, certificate_id: int) -> str:
    """Take a revoked certificate out of this host's trust directory (idempotent)."""
    row = certificate_remove_on_host(host_name=host_name, certificate_id=certificate_id)
    return row.state if row is not None else "skipped"


@shared_task(name="agents_app.agent.tasks.url_check_task")
@fails_into(logged_only, answer=_no_answer)
def url_check_task(url: str, headers: dict | None = None, host_name: str | None = None) -> dict:
    """Direct-download registration: can this host reach the URL (or every metalink mirror)?"""
    return url_check(url=url, headers=headers, ca_dir=ca_dir_for(host_name) if host_name else None)


@shared_task(name="agents_app.agent.tasks.url_verify_task")
@fails_into(logged_only, answer=_no_answer)
def url_verify_task(
    url: str,
    checksum: str,
    image_format: str,
    headers: dict | None = None,
    host_name: str | None = None,
) -> dict:
    """Direct-download registration with verify=true: fetch, hash and inspect the whole image."""
    return url_verify(
        url=url,
        checksum=checksum,
        image_format=image_format,
        headers=headers,
        ca_dir=ca_dir_for(host_name) if host_name else None,
    )


@shared_task(name="agents_app.agent.tasks.vm_disk_to_store_task", acks_late=True, bind=True)
@retried_when_busy
@fails_into(vm_failure("version from VM", into_error=False))
def vm_disk_to_store_task(self, vm_id: int, ref_id: int) -> str:
    """Copy a stopped VM's disk into an image store as a new template version's bytes."""
    return vms.vm_disk_to_store(vm_id=vm_id, ref_id=ref_id).download_state
