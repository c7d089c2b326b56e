"""Stateless VMs and 'latest' (seed 002): deploys from the newest ACTIVE version of a lineage.

Deploys run on the libvirt test driver; the agent's side is called directly, as the host's
worker would.
"""

import subprocess

import pytest

from agents_app import services as vm_services
from agents_app.agent import virt, vms
from agents_app.followers import rebuild_latest_followers, vm_version_create
from agents_app.models import VirtualMachine
from templates_app import services as template_services
from templates_app.copies import store_copy_download
from templates_app.errors import InvalidInput
from templates_app.models import TemplateStoreRef
from tests import libvirt_backends
from versions_app.services import template_version_create

from .test_deploy import backing_of, cloud, image_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture
def libvirt_backend(tmp_path):
    """The test driver only."""
    with libvirt_backends.open_backend("test", tmp_path) as backend:
        yield backend


@pytest.fixture
def lineage(cloud, user):  # noqa: F811
    """A READY base template and a function adding READY versions to it."""
    make, host, pool = cloud
    base = make("CACHE")

    def add_version(name: str = ""):
        version = template_version_create(base_template_id=base.pk, actor=user, version_name=name)
        store_copy_download(ref_id=TemplateStoreRef.objects.get(template=version).pk)
        return version

    return base, add_version


@pytest.fixture
def pool(cloud):  # noqa: F811
    return cloud[2]


def deploy(template, zone, account, user, **flags) -> VirtualMachine:
    vm = vm_services.vm_deploy(
        name="s", template_id=template.pk, zone=zone, account=account, actor=user, **flags
    )
    return vms.vm_deploy_on_host(vm_id=vm.pk)


def test_a_stateful_vm_cannot_follow_latest(lineage, zone, account, user):
    base, _ = lineage
    with pytest.raises(InvalidInput) as refused:
        vm_services.vm_deploy(
            name="x",
            template_id=base.pk,
            zone=zone,
            account=account,
            actor=user,
            use_latest_template_version=True,
        )
    assert refused.value.field == "use_latest_template_version"
    assert not VirtualMachine.objects.exists()


def test_a_stateless_vm_on_latest_is_deployed_from_the_newest_active_version(
    lineage, zone, account, user
):
    base, add_version = lineage
    v2 = add_version("v2")
    v3 = add_version("v3")
    template_services.template_deactivate(template_id=v3.pk, actor=user)

    # Any member of the lineage stands for it.
    for given in (base, v2):
        vm = deploy(given, zone, account, user, stateless=True, use_latest_template_version=True)
        assert vm.state == "RUNNING", vm.error_text
        assert vm.template_id == v2.pk
        assert vm.stateless and vm.use_latest_template_version


def test_a_stateless_vm_without_latest_keeps_the_version_it_names(lineage, zone, account, user):
    base, add_version = lineage
    add_version()
    vm = deploy(base, zone, account, user, stateless=True)
    assert vm.state == "RUNNING", vm.error_text
    assert vm.template_id == base.pk


def test_api_stateful_latest_is_400_and_get_shows_the_flags(api, lineage, zone):
    base, add_version = lineage
    v2 = add_version()
    body = {"name": "a", "template": str(base.uuid), "zone": str(zone.uuid)}

    refused = api.post("/api/v1/vms/", {**body, "use_latest_template_version": True}, format="json")
    assert refused.status_code == 400
    assert "use_latest_template_version" in str(refused.data)

    made = api.post(
        "/api/v1/vms/",
        {**body, "deploy": True, "stateless": True, "use_latest_template_version": True},
        format="json",
    )
    assert made.status_code == 201, made.data
    assert made.data["template"] == str(v2.uuid)
    assert made.data["stateless"] is True
    assert made.data["use_latest_template_version"] is True

    plain = api.post("/api/v1/vms/", body, format="json").data
    assert plain["stateless"] is False
    assert plain["use_latest_template_version"] is False


def test_get_shows_latest_as_false_for_a_stateful_vm(api, lineage, zone, account, user):
    base, _ = lineage
    vm = vm_services.vm_create(
        name="r", template_id=base.pk, zone=zone, account=account, actor=user
    )
    VirtualMachine.objects.filter(pk=vm.pk).update(follow_channel="latest")
    assert api.get(f"/api/v1/vms/{vm.uuid}/").data["use_latest_template_version"] is False


# A new version rebuilds the stopped followers; running ones when they next stop ----------------


def pool_copy_path(template, pool) -> str:
    from agents_app.models import TemplatePoolRef

    return TemplatePoolRef.objects.get(template=template, pool=pool).install_path


def stop(vm, user) -> VirtualMachine:
    """Stop through the service, then the host's work as its worker would run it."""
    vm_services.vm_stop(vm_id=vm.pk, actor=user)
    return vms.vm_sync_domain(vm_id=vm.pk, rebuild=vm.stateless)


def test_a_stopped_follower_is_rebuilt_onto_the_new_version(pool, lineage, zone, account, user):
    base, add_version = lineage
    vm = deploy(base, zone, account, user, stateless=True, use_latest_template_version=True)
    vm = stop(vm, user)
    assert vm.state == "STOPPED", vm.error_text
    assert backing_of(vm.root_disk_path) == pool_copy_path(base, pool)

    v2 = add_version("v2")
    assert rebuild_latest_followers(base_template_id=base.pk) == 1
    rebuilt = vms.vm_rebuild_on_host(vm_id=vm.pk)

    assert rebuilt.error_text == ""
    assert rebuilt.template_id == v2.pk
    assert (rebuilt.pk, rebuilt.uuid, rebuilt.name, rebuilt.zone_id, rebuilt.account_id) == (
        vm.pk,
        vm.uuid,
        vm.name,
        vm.zone_id,
        vm.account_id,
    )
    assert rebuilt.stateless and rebuilt.state == "STOPPED"
    assert backing_of(rebuilt.root_disk_path) == pool_copy_path(v2, pool)
    conn = virt.connection(rebuilt.host.libvirt_uri)
    assert virt.domain_state(conn, vms.domain_name(rebuilt)) == "shutoff"
    assert rebuild_latest_followers(base_template_id=base.pk) == 0, "nothing left to move"

    vm_services.vm_start(vm_id=vm.pk, actor=user)
    assert vms.vm_sync_domain(vm_id=vm.pk).error_text == ""
    assert virt.domain_state(conn, vms.domain_name(rebuilt)) == "running"


def test_a_stopped_follower_is_not_moved_onto_a_quarantined_version(
    pool, lineage, zone, account, user, tmp_path
):
    from templates_app import storepaths
    from templates_app.rescan import rescan_images
    from tests import image_bombs

    base, add_version = lineage
    vm = stop(
        deploy(base, zone, account, user, stateless=True, use_latest_template_version=True), user
    )
    v2 = add_version("v2")
    copy = TemplateStoreRef.objects.get(template=v2)
    bomb = image_bombs.shared_cluster(tmp_path / "bomb.qcow2").read_bytes()
    storepaths.absolute(copy.store, copy.install_path).write_bytes(bomb)
    assert rescan_images().quarantined == 1

    assert rebuild_latest_followers(base_template_id=base.pk) == 0
    vm.refresh_from_db()
    assert vm.template_id == base.pk


def test_a_running_follower_is_rebuilt_when_it_next_stops(pool, lineage, zone, account, user):
    base, add_version = lineage
    vm = deploy(base, zone, account, user, stateless=True, use_latest_template_version=True)
    v2 = add_version()

    assert rebuild_latest_followers(base_template_id=base.pk) == 0
    vm.refresh_from_db()
    assert vm.template_id == base.pk and vm.state == "RUNNING"

    vm = stop(vm, user)
    assert vm.error_text == ""
    assert vm.template_id == v2.pk
    assert backing_of(vm.root_disk_path) == pool_copy_path(v2, pool)


def test_a_stateless_vm_loses_its_disk_changes_when_it_stops(lineage, zone, account, user):
    base, add_version = lineage
    vm = deploy(base, zone, account, user, stateless=True)
    scribble(vm.root_disk_path)
    assert reads_pattern(vm.root_disk_path, 0x77)
    add_version()

    vm = stop(vm, user)
    assert vm.error_text == ""
    assert vm.template_id == base.pk, "without 'latest' it keeps its version"
    assert not reads_pattern(vm.root_disk_path, 0x77)
    assert reads_pattern(vm.root_disk_path, 0x5A), "the template's bytes are back"


def test_a_stateful_vm_on_the_base_is_never_touched(lineage, zone, account, user):
    base, add_version = lineage
    vm = deploy(base, zone, account, user)
    scribble(vm.root_disk_path)
    vm = stop(vm, user)
    add_version()

    assert rebuild_latest_followers(base_template_id=base.pk) == 0
    vm.refresh_from_db()
    assert vm.template_id == base.pk
    assert reads_pattern(vm.root_disk_path, 0x77), "its disk keeps its changes"


def test_a_version_whose_bytes_become_ready_enqueues_the_rebuild_job(
    base_only, user, django_capture_on_commit_callbacks
):
    from unittest import mock

    from templates_app.signals import send_store_copy_ready_on_commit

    with mock.patch("agents_app.handlers.rebuild_latest_followers_task.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            version = template_version_create(base_template_id=base_only.pk, actor=user)
        delay.assert_not_called()  # its copy is still downloading: 'latest' is not there yet
        ref = version.store_refs.get()
        with django_capture_on_commit_callbacks(execute=True):
            send_store_copy_ready_on_commit(template_id=version.pk, ref_id=ref.pk)
    delay.assert_called_once_with(base_template_id=base_only.pk)


def test_a_direct_download_version_enqueues_the_rebuild_job_at_once(
    register, user, django_capture_on_commit_callbacks
):
    from unittest import mock

    base = register(direct_download=True, checksum="{SHA-256}" + "a" * 64)
    with (
        mock.patch("agents_app.handlers.rebuild_latest_followers_task.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        template_version_create(base_template_id=base.pk, actor=user)
    delay.assert_called_once_with(base_template_id=base.pk)


@pytest.fixture
def base_only(register):
    return register()


def scribble(path: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 1M 64k", path],
        check=True,
        capture_output=True,
    )


def reads_pattern(path: str, pattern: int) -> bool:
    result = subprocess.run(
        ["qemu-io", "-U", "-f", "qcow2", "-r", "-c", f"read -P {pattern} 1M 64k", path],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout


# VM pools ----------------------------------------------------------------------------------------


def test_pool_on_latest_hands_out_the_new_version(lineage, zone, account, user, other_user):
    """The seed's case: a pool of 2 VMs, 1 taken; a new version is created; take VM 2 -> new
    version; return VM 1 and take it again -> new version."""
    from agents_app import vm_pools

    base, add_version = lineage
    pool = vm_pools.vm_pool_create(
        name="desk",
        template_id=base.pk,
        zone=zone,
        account=account,
        size=2,
        actor=user,
        use_latest_template_version=True,
    )
    vm1, vm2 = pool.vms.order_by("id")
    for vm in (vm1, vm2):
        done = vms.vm_deploy_on_host(vm_id=vm.pk)
        assert done.state == "STOPPED", done.error_text or "a free pool VM is kept down"
        assert done.stateless and done.template_id == base.pk

    taken1 = vm_pools.vm_pool_take(pool_id=pool.pk, user=user)
    assert taken1.pk == vm1.pk and taken1.state == "RUNNING"
    vms.vm_sync_domain(vm_id=vm1.pk)

    v2 = add_version("v2")
    assert rebuild_latest_followers(base_template_id=base.pk) == 1, "only the free, down VM"
    vms.vm_rebuild_on_host(vm_id=vm2.pk)
    vm1.refresh_from_db()
    assert vm1.template_id == base.pk, "a VM in use is not touched"

    taken2 = vm_pools.vm_pool_take(pool_id=pool.pk, user=other_user)
    assert taken2.pk == vm2.pk and taken2.template_id == v2.pk
    assert vms.vm_sync_domain(vm_id=vm2.pk).error_text == ""

    with pytest.raises(vm_pools.PoolExhausted):
        vm_pools.vm_pool_take(pool_id=pool.pk, user=user)

    returned = vm_pools.vm_pool_return(vm_id=vm1.pk, user=user)
    assert returned.state == "STOPPED" and returned.taken_by_id is None
    vms.vm_sync_domain(vm_id=vm1.pk, rebuild=True)
    again = vm_pools.vm_pool_take(pool_id=pool.pk, user=user)
    assert again.pk == vm1.pk and again.template_id == v2.pk
    assert vms.vm_sync_domain(vm_id=vm1.pk).error_text == ""
    again.refresh_from_db()
    assert backing_of(again.root_disk_path) == pool_copy_path(v2, again.pool)


def test_pool_admin_creates_the_pool_and_takes_and_returns(
    client, admin_user, lineage, zone, account
):
    from django.urls import reverse

    from agents_app.models import VmPool

    base, _ = lineage
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:agents_app_vmpool_add"),
        {
            "name": "lab",
            "account": account.pk,
            "zone": zone.pk,
            "template": base.pk,
            "follow_channel": "latest",
            "size": 1,
            "vms-TOTAL_FORMS": 0,
            "vms-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 302, response.content[:2000]
    pool = VmPool.objects.get(name="lab")
    (vm,) = pool.vms.all()
    assert vm.stateless and vm.use_latest_template_version
    vms.vm_deploy_on_host(vm_id=vm.pk)

    changelist = reverse("admin:agents_app_vmpool_changelist")
    client.post(changelist, {"action": "take_selected", "_selected_action": [pool.pk]})
    vm.refresh_from_db()
    assert vm.taken_by == admin_user and vm.state == "RUNNING"
    assert client.get(reverse("admin:agents_app_vmpool_change", args=[pool.pk])).status_code == 200

    client.post(changelist, {"action": "return_selected", "_selected_action": [pool.pk]})
    vm.refresh_from_db()
    assert vm.taken_by is None and vm.state == "STOPPED"


def test_pool_api_create_take_return(api, other_api, lineage, zone):
    base, add_version = lineage
    made = api.post(
        "/api/v1/vm-pools/",
        {
            "name": "class",
            "template": str(base.uuid),
            "zone": str(zone.uuid),
            "size": 1,
            "use_latest_template_version": True,
        },
        format="json",
    )
    assert made.status_code == 201, made.data
    pool_id = made.data["id"]
    vm_id = str(made.data["vms"][0])
    vm = VirtualMachine.objects.get(uuid=vm_id)
    assert vm.stateless and vm.use_latest_template_version
    vms.vm_deploy_on_host(vm_id=vm.pk)

    assert other_api.get(f"/api/v1/vm-pools/{pool_id}/").status_code == 404
    taken = api.post(f"/api/v1/vm-pools/{pool_id}/take/")
    assert taken.status_code == 200, taken.data
    assert taken.data["id"] == vm_id and taken.data["state"] == "RUNNING"
    assert api.post(f"/api/v1/vm-pools/{pool_id}/take/").status_code == 409

    v2 = add_version()
    back = api.post(f"/api/v1/vm-pools/{pool_id}/return/", {"vm": vm_id}, format="json")
    assert back.status_code == 200, back.data
    assert back.data["state"] == "STOPPED"
    assert back.data["template"] == str(v2.uuid), "a returned follower moves to the new version"


def test_a_rebuild_onto_bytes_not_there_yet_keeps_the_old_disk(pool, lineage, zone, account, user):
    from pathlib import Path

    base, _ = lineage
    vm = deploy(base, zone, account, user, stateless=True, use_latest_template_version=True)
    vm = stop(vm, user)
    old_disk = vm.root_disk_path
    pending = template_version_create(base_template_id=base.pk, actor=user)  # not downloaded

    assert rebuild_latest_followers(base_template_id=base.pk) == 1
    kept = vms.vm_rebuild_on_host(vm_id=vm.pk)

    assert kept.template_id == pending.pk
    assert "rebuild" in kept.error_text
    assert Path(old_disk).exists()
    assert backing_of(old_disk) == pool_copy_path(base, pool), "the old disk is untouched"
    conn = virt.connection(kept.host.libvirt_uri)
    assert virt.domain_state(conn, vms.domain_name(kept)) == "shutoff"


# Versions from a VM (the seed's first case) ------------------------------------------------------


def test_version_from_a_vm_then_latest_reads_the_vm_change(lineage, zone, account, user):
    """Create a VM from a template; change its disk; create a version from that VM; deploy from
    'latest': the new VM's disk reads the pattern back."""
    base, _ = lineage
    source = deploy(base, zone, account, user)
    source = stop(source, user)
    scribble(source.root_disk_path)

    version = vm_version_create(vm_id=source.pk, actor=user, version_name="patched")
    ref = TemplateStoreRef.objects.get(template=version)
    ref = vms.vm_disk_to_store(vm_id=source.pk, ref_id=ref.pk)
    assert (ref.download_state, ref.state) == ("DOWNLOADED", "READY"), ref.error_text
    assert (version.base_id, version.version_number, version.version_name) == (
        base.pk,
        2,
        "patched",
    )

    fresh = deploy(base, zone, account, user, stateless=True, use_latest_template_version=True)
    assert fresh.state == "RUNNING", fresh.error_text
    assert fresh.template_id == version.pk
    assert reads_pattern(fresh.root_disk_path, 0x77)


def test_version_from_a_running_vm_is_refused(lineage, zone, account, user):
    from templates_app.errors import StencilError
    from templates_app.models import Template

    base, _ = lineage
    running = deploy(base, zone, account, user)
    with pytest.raises(StencilError, match="stop the VM") as refused:
        vm_version_create(vm_id=running.pk, actor=user)
    assert refused.value.status_code == 409
    assert not Template.objects.filter(base=base).exists()


def test_api_creates_a_version_from_a_stopped_vm(api, lineage, zone, account, user):
    base, _ = lineage
    vm = stop(deploy(base, zone, account, user), user)
    response = api.post(
        f"/api/v1/vms/{vm.uuid}/create-version/", {"version_name": "v2"}, format="json"
    )
    assert response.status_code == 202, response.data
    assert response.data["version_number"] == 2
    lineage_ids = [t["id"] for t in api.get(f"/api/v1/templates/{base.uuid}/versions/").data]
    assert response.data["template"] in lineage_ids
