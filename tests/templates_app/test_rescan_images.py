"""`manage.py rescan_images` and the admin's rescan actions: real image files on a temporary
store (one good, one attack image written straight into the store, as an older inspector would
have let it in), real qemu-img. Failures are QUARANTINED with an event, their bytes kept, and
nothing deploys or prepares from them."""

import hashlib
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse

from agents_app import pool_copies
from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.models import PrimaryPool, TemplatePoolRef, VirtualMachine
from templates_app import storepaths
from templates_app.copies import store_copy_download
from templates_app.models import Event, TemplateStoreRef
from templates_app.rescan import ImageQuarantined
from tests import image_bombs

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True


@pytest.fixture
def good_bytes(tmp_path) -> bytes:
    return image_bombs.good(tmp_path / "good.qcow2").read_bytes()


@pytest.fixture
def stored(register, httpserver, good_bytes):
    """A template whose store copy a real download made READY; `bomb=True` then replaces the
    file on the store with an attack image."""
    httpserver.expect_request("/good.qcow2").respond_with_data(good_bytes)
    checksum = "{SHA-256}" + hashlib.sha256(good_bytes).hexdigest()

    def make(name: str, replacement: bytes | None = None) -> TemplateStoreRef:
        template = register(name=name, url=httpserver.url_for("/good.qcow2"), checksum=checksum)
        ref = store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
        assert ref.state == "READY", ref.error_text
        if replacement is not None:
            file_of(ref).write_bytes(replacement)
        return ref

    return make


def file_of(ref: TemplateStoreRef) -> Path:
    return storepaths.absolute(ref.store, ref.install_path)


@pytest.fixture
def bomb_bytes(tmp_path) -> bytes:
    return image_bombs.shared_cluster(tmp_path / "bomb.qcow2").read_bytes()


def rescan(*args) -> str:
    out = StringIO()
    call_command("rescan_images", *args, stdout=out)
    return out.getvalue()


def test_rescan_quarantines_the_bomb_keeps_its_bytes_and_is_idempotent(
    stored, good_bytes, bomb_bytes
):
    good = stored("good")
    bomb = stored("bomb", bomb_bytes)
    gone = stored("gone")
    file_of(gone).unlink()

    out = rescan("--batch-size", "1")

    assert "checked 2, passed 1, quarantined 1, missing 1" in out
    assert f"quarantined store copy {bomb.pk}" in out
    bomb.refresh_from_db()
    assert (bomb.state, bomb.download_state) == ("QUARANTINED", "DOWNLOADED")
    assert bomb.error_text.startswith("quarantined: qemu-img check found 1 corruption")
    assert file_of(bomb).read_bytes() == bomb_bytes, "never deletes bytes"
    event = Event.objects.get(object_id=bomb.pk, to_state="QUARANTINED")
    assert (event.from_state, event.actor_label) == ("READY", "manage.py rescan_images")
    assert "bytes kept" in event.reason
    good.refresh_from_db()
    assert good.state == "READY" and file_of(good).read_bytes() == good_bytes
    gone.refresh_from_db()
    assert gone.state == "READY", "a missing file is template sync's business"

    again = rescan()

    assert "checked 1, passed 1, quarantined 0, missing 1" in again
    assert Event.objects.filter(to_state="QUARANTINED").count() == 1


def test_a_quarantined_template_is_not_deployed_or_prepared(
    stored, bomb_bytes, api, zone, account, user
):
    bomb = stored("bomb", bomb_bytes)
    rescan()
    template = bomb.template

    response = api.post(
        "/api/v1/vms/",
        {"name": "vm", "template": str(template.uuid), "zone": str(zone.uuid)},
    )
    assert response.status_code == 409, response.data
    assert "quarantined" in response.data["detail"]
    with pytest.raises(ImageQuarantined, match="quarantined"):
        vm_services.vm_deploy(
            name="vm", template_id=template.pk, zone=zone, account=account, actor=user
        )
    assert not VirtualMachine.objects.exists()

    host = heartbeat.host_register(name="kvm-r", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(zone=zone, name="p", libvirt_pool_name="p", path="/srv/p")
    pool.hosts.add(host)
    with pytest.raises(ImageQuarantined, match="cannot prepare"):
        pool_copies.template_prepare(template_id=template.pk, pool_ids=[pool.pk], actor=user)
    assert not TemplatePoolRef.objects.filter(template=template).exists()


def test_a_deleted_quarantined_template_is_swept_with_its_bytes(
    stored, bomb_bytes, api, sweeps_run_here, admin_api
):
    """Quarantine keeps bytes from the rescan, not from the operator: deleting the template
    lets the GC sweep remove the copy like any other."""
    bomb = stored("bomb", bomb_bytes)
    rescan()
    assert api.delete(f"/api/v1/templates/{bomb.template.uuid}/").status_code in (200, 204)
    with sweeps_run_here():
        assert admin_api.post("/api/v1/gc/sweep/", {}, format="json").status_code == 202
    bomb.refresh_from_db()
    assert bomb.state == "DESTROYED"
    assert not file_of(bomb).exists()


def test_the_admin_actions_rescan_selected_copies_and_templates(
    stored, bomb_bytes, client, admin_user
):
    bomb = stored("bomb", bomb_bytes)
    other = stored("other", bomb_bytes)
    client.force_login(admin_user)

    response = client.post(
        reverse("admin:templates_app_templatestoreref_changelist"),
        {"action": "rescan_selected", "_selected_action": [bomb.pk]},
        follow=True,
    )
    assert "checked 1, passed 0, quarantined 1, missing 0" in response.content.decode()
    bomb.refresh_from_db()
    other.refresh_from_db()
    assert (bomb.state, other.state) == ("QUARANTINED", "READY")
    assert Event.objects.get(object_id=bomb.pk, to_state="QUARANTINED").actor == admin_user

    response = client.post(
        reverse("admin:templates_app_template_changelist"),
        {"action": "rescan_selected", "_selected_action": [bomb.template_id, other.template_id]},
        follow=True,
    )
    assert "checked 1, passed 0, quarantined 1, missing 0" in response.content.decode()
    other.refresh_from_db()
    assert other.state == "QUARANTINED"
    assert file_of(other).read_bytes() == bomb_bytes
