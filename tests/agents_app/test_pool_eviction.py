"""Eviction of cached pool copies in the GC sweep: two passes, unpinned and unused only."""

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.agent import heartbeat
from agents_app.agent.pool_copies import pool_copy_delete_on_host
from agents_app.models import PrimaryPool, TemplatePoolRef
from agents_app.pool_copies import pool_copies_evict
from templates_app import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def pool(zone, tmp_path):
    from agents_app.agent import virt

    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "node.xml", pools={"p": pool_dir})
    host = heartbeat.host_register(name="kvm-e", zone=zone, libvirt_uri=uri)
    pool = PrimaryPool.objects.create(
        zone=zone,
        name="p",
        libvirt_pool_name="p",
        path=str(pool_dir),
        capacity_bytes=1000,
        used_bytes=0,
    )
    pool.hosts.add(host)
    return pool


def cached_copy(template, pool, *, age_seconds=7200, pinned=False, size=100, used_ago=None):
    """A DOWNLOADED copy row with its file (the copying itself is tested in test_deploy)."""
    from pathlib import Path

    path = Path(pool.path) / f"tmpl-{template.unique_name}.qcow2"
    path.write_bytes(b"x" * size)
    ref = TemplatePoolRef.objects.create(
        template=template,
        pool=pool,
        pinned=pinned,
        volume_name=path.name,
        install_path=str(path),
        physical_size=size,
    )
    old = timezone.now() - timedelta(seconds=age_seconds)
    last_used = timezone.now() - timedelta(seconds=used_ago) if used_ago else old
    TemplatePoolRef.objects.filter(pk=ref.pk).update(
        state="DOWNLOADED", updated_at=old, last_used_at=last_used
    )
    return ref


def test_copy_of_a_removed_template_is_evicted_in_two_passes(register, pool, user):
    template = register()
    ref = cached_copy(template, pool)
    services.template_deactivate(template_id=template.pk, actor=user)

    services.gc_sweep()  # the template goes; its pool copy is compute's to evict
    assert pool_copies_evict() == {"marked": 1, "evicting": 0}
    assert TemplatePoolRef.objects.get(pk=ref.pk).state == "DOWNLOADED"

    assert pool_copies_evict()["evicting"] == 1
    assert TemplatePoolRef.objects.get(pk=ref.pk).state == "EVICTING"
    host = pool.hosts.get()
    assert pool_copy_delete_on_host(ref_id=ref.pk, libvirt_uri=host.libvirt_uri)
    assert not TemplatePoolRef.objects.filter(pk=ref.pk).exists()
    assert not any(__import__("pathlib").Path(pool.path).iterdir())


def test_pinned_used_and_young_copies_stay(register, pool, make_vm, zone, user):
    pinned = cached_copy(register(name="pinned"), pool, pinned=True)
    young = cached_copy(register(name="young"), pool, age_seconds=10)
    used_template = register(name="used")
    used = cached_copy(used_template, pool)
    vm = make_vm(used_template)
    vm.__class__.objects.filter(pk=vm.pk).update(pool=pool)
    for template_id in (pinned.template_id, young.template_id, used.template_id):
        services.template_deactivate(template_id=template_id, actor=user)

    for _ in range(2):
        result = pool_copies_evict()
    assert result == {"marked": 0, "evicting": 0}
    assert set(TemplatePoolRef.objects.values_list("state", flat=True)) == {"DOWNLOADED"}


def test_active_templates_are_evicted_only_over_the_threshold_lru_first(register, pool):
    oldest = cached_copy(register(name="oldest"), pool, used_ago=5000)
    newer = cached_copy(register(name="newer"), pool, used_ago=4000)
    PrimaryPool.objects.filter(pk=pool.pk).update(used_bytes=500, cache_threshold_percent=80)
    assert pool_copies_evict()["marked"] == 0, "under the threshold nothing goes"

    PrimaryPool.objects.filter(pk=pool.pk).update(used_bytes=850)
    pool_copies_evict()
    pool_copies_evict()
    states = dict(TemplatePoolRef.objects.values_list("pk", "state"))
    assert states == {oldest.pk: "EVICTING", newer.pk: "DOWNLOADED"}


def test_a_copy_used_between_the_passes_is_kept(register, pool):
    template = register()
    ref = cached_copy(template, pool)
    PrimaryPool.objects.filter(pk=pool.pk).update(used_bytes=900, cache_threshold_percent=50)
    assert pool_copies_evict()["marked"] == 1
    # A deploy used it: pool_copy_ensure touches the row (last use, mark cleared).
    TemplatePoolRef.objects.filter(pk=ref.pk).update(
        last_used_at=timezone.now(), marked_for_eviction_at=None, updated_at=timezone.now()
    )
    assert pool_copies_evict()["evicting"] == 0
    assert TemplatePoolRef.objects.get(pk=ref.pk).state == "DOWNLOADED"


def test_reconciler_flags_vanished_copies_and_reports_unknown_files(register, pool):
    from io import StringIO
    from pathlib import Path

    from django.core.management import call_command

    gone = cached_copy(register(name="gone"), pool)
    kept = cached_copy(register(name="kept"), pool)
    Path(gone.install_path).unlink()
    (Path(pool.path) / "stray.qcow2").write_bytes(b"?")

    out = StringIO()
    call_command("reconcile_pools", stdout=out)

    assert "1 vanished, 1 unknown" in out.getvalue()
    assert "stray.qcow2" in out.getvalue()
    assert TemplatePoolRef.objects.get(pk=gone.pk).state == "DOWNLOAD_ERROR"
    assert TemplatePoolRef.objects.get(pk=kept.pk).state == "DOWNLOADED"
    assert (Path(pool.path) / "stray.qcow2").exists(), "unknown files are only reported"


def test_removing_a_template_deletes_its_unused_pool_copies_at_once(
    register, pool, user, django_capture_on_commit_callbacks
):
    """CloudStack's template.delete.from.primary.storage: no min age, no second pass."""
    from pathlib import Path

    template = register()
    keep = register(name="still-active")
    young = cached_copy(template, pool, age_seconds=5)
    other = cached_copy(keep, pool, age_seconds=5)
    services.template_deactivate(template_id=template.pk, actor=user)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        result = services.gc_sweep()

    assert result.removed_count == 1
    evicting = TemplatePoolRef.objects.get(pk=young.pk)
    assert evicting.state == "EVICTING", "deleted when the sweep removed its template"
    assert evicting.marked_for_eviction_at is None, "not through the LRU's two passes"
    assert TemplatePoolRef.objects.get(pk=other.pk).state == "DOWNLOADED"
    assert len(callbacks) >= 2, "the removal's signal, then the host's evict task after commit"
    host = pool.hosts.get()
    assert pool_copy_delete_on_host(ref_id=young.pk, libvirt_uri=host.libvirt_uri)
    assert not TemplatePoolRef.objects.filter(pk=young.pk).exists()
    assert [p.name for p in Path(pool.path).iterdir()] == [Path(other.install_path).name]


def test_delete_from_primary_storage_off_leaves_copies_to_eviction(
    register, pool, user, settings, django_capture_on_commit_callbacks
):
    settings.STENCIL_DELETE_FROM_PRIMARY_STORAGE = False
    template = register()
    ref = cached_copy(template, pool)
    services.template_deactivate(template_id=template.pk, actor=user)

    with django_capture_on_commit_callbacks(execute=True):
        services.gc_sweep()

    assert TemplatePoolRef.objects.get(pk=ref.pk).state == "DOWNLOADED"
    assert pool_copies_evict() == {"marked": 1, "evicting": 0}


# A deploy's cheap read of a copy in use (agents_app.agent.pool_copies._recently_used_copy)
# against eviction, on separate PostgreSQL connections.


def _alive_vm_on(template, pool, account, zone):
    """A STARTING VM row of the template on the pool, as vm_deploy commits it."""
    from agents_app.models import VirtualMachine

    return VirtualMachine.objects.create(
        name="racer", account=account, template=template, zone=zone, pool=pool, state="STARTING"
    )


@pytest.mark.django_db(transaction=True)
def test_a_deploy_racing_an_eviction_in_progress_waits_for_it_and_does_not_get_the_copy(
    register, pool, account, zone, monkeypatch
):
    """The eviction has checked that no VM is on the copy and saved EVICTING, not committed
    yet: the new VM's row waits for it (the eviction holds the pool's row), and the deploy's
    read then finds the copy EVICTING and leaves it to the locked path."""
    import threading

    from django.db import connections

    from agents_app import pool_copies as management
    from agents_app.agent.pool_copies import _recently_used_copy
    from agents_app.pool_copies import pool_copies_evict_removed
    from templates_app.models import Template

    template = register()
    ref = cached_copy(template, pool, used_ago=5)
    Template.objects.filter(pk=template.pk).update(state="REMOVED")
    in_eviction, go = threading.Event(), threading.Event()
    real_record_event = management.record_event

    def paused_record_event(*args, **kwargs):
        in_eviction.set()  # EVICTING is saved, its check done; not committed yet
        assert go.wait(30)
        return real_record_event(*args, **kwargs)

    monkeypatch.setattr(management, "record_event", paused_record_event)
    results = {}

    def run(key, body):
        try:
            results[key] = body()
        except Exception as exc:  # shown by the assertions below
            results[key] = exc
        finally:
            connections.close_all()

    evictor = threading.Thread(
        target=run, args=("evicted", lambda: pool_copies_evict_removed(template_ids=[template.pk]))
    )
    evictor.start()
    assert in_eviction.wait(10)
    creator = threading.Thread(
        target=run, args=("vm", lambda: _alive_vm_on(template, pool, account, zone))
    )
    creator.start()
    creator.join(0.5)
    assert creator.is_alive(), ("the VM row waits for the eviction", results)
    go.set()
    evictor.join(10)
    creator.join(10)
    vm = results["vm"]
    read = _recently_used_copy(template.pk, pool.pk, vm_id=vm.pk)

    assert (results["evicted"], read) == (1, None), "the locked path gets to decide"
    assert TemplatePoolRef.objects.get(pk=ref.pk).state == "EVICTING"


@pytest.mark.django_db(transaction=True)
def test_an_eviction_after_a_cheap_read_sees_the_vm_and_keeps_the_copy(
    register, pool, account, zone
):
    from agents_app.agent.pool_copies import _recently_used_copy
    from agents_app.pool_copies import pool_copies_evict_removed
    from templates_app.models import Template

    template = register()
    ref = cached_copy(template, pool, used_ago=5)
    vm = _alive_vm_on(template, pool, account, zone)
    assert _recently_used_copy(template.pk, pool.pk, vm_id=vm.pk).pk == ref.pk

    Template.objects.filter(pk=template.pk).update(state="REMOVED")
    assert pool_copies_evict_removed(template_ids=[template.pk]) == 0
    assert TemplatePoolRef.objects.get(pk=ref.pk).state == "DOWNLOADED"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "change",
    [
        {"last_used_at": timezone.now() - timedelta(seconds=120)},
        {"marked_for_eviction_at": timezone.now()},
        {"state": "EVICTING"},
    ],
    ids=["used-long-ago", "marked", "evicting"],
)
def test_the_cheap_read_leaves_other_copies_to_the_locked_path(
    register, pool, account, zone, change
):
    from agents_app.agent.pool_copies import _recently_used_copy

    template = register()
    ref = cached_copy(template, pool, used_ago=5)
    vm = _alive_vm_on(template, pool, account, zone)
    TemplatePoolRef.objects.filter(pk=ref.pk).update(**change)
    assert _recently_used_copy(template.pk, pool.pk, vm_id=vm.pk) is None
