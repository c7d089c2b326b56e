"""Signed uploads (getUploadParamsForTemplate): limits, signature, expiry, replay, streaming."""

import hashlib
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from templates_app.models import Account, Template, TemplateStoreRef
from templates_app.uploads import abandon_expired_uploads

pytestmark = pytest.mark.django_db

PARAMS = "/api/v1/templates/upload-params/"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("up") / "u.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), "32M"], check=True, capture_output=True
    )
    return path.read_bytes()


def ask(api, target_zone, **overrides):
    body = {"name": "uploaded", "format": "QCOW2", "zone": str(target_zone.uuid)}
    body.update(overrides)
    return api.post(PARAMS, body, format="json")


def post_bytes(client, params, data: bytes, **header_overrides):
    headers = {
        "X-Metadata": params["metadata"],
        "X-Expires": params["expires"],
        "X-Signature": params["signature"],
    }
    headers.update(header_overrides)
    path = params["post_url"].split("://", 1)[1].split("/", 1)[1]
    return client.generic(
        "POST", "/" + path, data=data, content_type="application/octet-stream", headers=headers
    )


def test_upload_end_to_end(api, client, zone, store, account, image):
    checksum = "{SHA-256}" + hashlib.sha256(image).hexdigest()
    response = ask(api, zone, checksum=checksum, size=len(image))
    assert response.status_code == 201, response.data
    params = response.data
    assert set(params) == {"id", "post_url", "metadata", "expires", "signature"}
    ref = TemplateStoreRef.objects.get(template__uuid=params["id"])
    assert ref.download_state == "NOT_UPLOADED"
    account.refresh_from_db()
    assert (account.used_templates, account.used_secondary_bytes) == (1, len(image))

    done = post_bytes(client, params, image)

    assert done.status_code == 201, done.content
    ref.refresh_from_db()
    assert (ref.download_state, ref.state) == ("UPLOADED", "READY")
    assert ref.size == 32 * 1024 * 1024
    template = ref.template
    assert ref.install_path.endswith(f"{template.unique_name}.qcow2")
    assert (Path(store.path) / ref.install_path).read_bytes() == image
    props = (Path(store.path) / ref.install_path).parent / "template.properties"
    assert f"uniquename={template.unique_name}" in props.read_text()


def test_replay_after_completion_is_409(api, client, zone, store, image):
    params = ask(api, zone).data
    assert post_bytes(client, params, image).status_code == 201
    assert post_bytes(client, params, image).status_code == 409


@pytest.mark.parametrize("header", ["X-Signature", "X-Metadata", "X-Expires"])
def test_tampered_upload_is_403_and_writes_nothing(api, client, zone, store, image, header):
    params = ask(api, zone).data
    forged = {
        "X-Signature": "0" * 64,
        "X-Metadata": params["metadata"][:-4] + "AAAA",
        "X-Expires": "2099-01-01T00:00:00Z",
    }[header]

    response = post_bytes(client, params, image, **{header: forged})

    assert response.status_code == 403
    assert params["signature"] not in response.content.decode()
    assert list(Path(store.path).rglob("*.qcow2")) == []
    assert TemplateStoreRef.objects.get(template__uuid=params["id"]).download_state == (
        "NOT_UPLOADED"
    )


def test_expired_upload_is_403(api, client, zone, store, image, settings):
    settings.STENCIL_UPLOAD_EXPIRY_SECONDS = -1
    params = ask(api, zone).data
    response = post_bytes(client, params, image)
    assert response.status_code == 403
    assert "expired" in response.json()["detail"]


def test_bad_checksum_is_an_error_and_can_be_sent_again(api, client, zone, store, image):
    params = ask(api, zone, checksum="{MD5}" + "0" * 32).data
    response = post_bytes(client, params, image)
    assert response.status_code == 400
    assert "checksum mismatch" in response.json()["file"][0]
    ref = TemplateStoreRef.objects.get(template__uuid=params["id"])
    assert ref.download_state == "UPLOAD_ERROR"
    assert not any(p.is_file() for p in Path(store.path).rglob("*"))


def test_hostile_upload_is_rejected(api, client, zone, store, tmp_path):
    base, child = tmp_path / "b.qcow2", tmp_path / "c.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(base), "1M"], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(child)],
        check=True,
        capture_output=True,
    )
    params = ask(api, zone).data
    response = post_bytes(client, params, child.read_bytes())
    assert response.status_code == 400
    assert "backing file" in response.json()["file"][0]
    assert not any(p.is_file() for p in Path(store.path).rglob("*"))


def test_limits_are_checked_and_named(api, zone, store, account):
    account.max_secondary_bytes = 500
    account.save()
    response = ask(api, zone, size=1000)
    assert response.status_code == 400
    assert "max_secondary_bytes" in response.data
    assert not Template.objects.exists()


def test_bad_upload_params_name_the_field(api, zone, store):
    assert "zone" in ask(api, zone, zone="nope").data
    assert "size" in ask(api, zone, size=-1).data
    assert "checksum" in ask(api, zone, checksum="{SHA-1}12").data
    assert not Template.objects.exists()


def test_expired_unfinished_uploads_are_abandoned_and_uncharged(api, zone, store, account):
    params = ask(api, zone, size=1000).data
    TemplateStoreRef.objects.filter(template__uuid=params["id"]).update(
        upload_expires_at=timezone.now() - timedelta(seconds=1)
    )

    assert abandon_expired_uploads() == 1
    assert abandon_expired_uploads() == 0

    ref = TemplateStoreRef.objects.get(template__uuid=params["id"])
    assert ref.download_state == "UPLOAD_ABANDONED"
    assert ref.template.state == "INACTIVE"
    account = Account.objects.get(pk=account.pk)
    assert (account.used_templates, account.used_secondary_bytes) == (0, 0)


def test_upload_template_command_uses_the_same_flow(zone, store, account, tmp_path, image):
    from io import StringIO

    from django.core.management import call_command

    path = tmp_path / "disk.qcow2"
    path.write_bytes(image)
    out, err = StringIO(), StringIO()
    call_command(
        "upload_template",
        str(path),
        "--name",
        "cli",
        "--format",
        "QCOW2",
        "--zone",
        zone.name,
        "--account",
        account.name,
        stdout=out,
        stderr=err,
    )
    assert "UPLOADED" in out.getvalue()
    assert "100%" in err.getvalue()
    ref = TemplateStoreRef.objects.get(template__name="cli")
    assert (Path(store.path) / ref.install_path).read_bytes() == image


def died_mid_upload(params, *, lease_left: timedelta) -> TemplateStoreRef:
    """The copy as a web worker that died mid-upload leaves it: in progress, its lease set."""
    ref = TemplateStoreRef.objects.get(template__uuid=params["id"])
    TemplateStoreRef.objects.filter(pk=ref.pk).update(
        download_state="UPLOAD_IN_PROGRESS",
        state="CREATING",
        lease_owner="dead-web-worker",
        lease_expires_at=timezone.now() + lease_left,
    )
    return ref


def test_an_upload_whose_web_worker_died_is_taken_over_once_its_lease_ran_out(
    api, client, zone, store, image
):
    params = ask(api, zone, size=len(image)).data
    ref = died_mid_upload(params, lease_left=timedelta(seconds=-1))

    done = post_bytes(client, params, image)

    assert done.status_code == 201, done.content
    ref.refresh_from_db()
    assert (ref.download_state, ref.state, ref.lease_owner) == ("UPLOADED", "READY", "")


def test_an_upload_under_way_is_409_while_its_lease_lives(api, client, zone, store, image):
    params = ask(api, zone, size=len(image)).data
    ref = died_mid_upload(params, lease_left=timedelta(seconds=60))

    assert post_bytes(client, params, image).status_code == 409
    ref.refresh_from_db()
    assert (ref.download_state, ref.lease_owner) == ("UPLOAD_IN_PROGRESS", "dead-web-worker")


def test_a_body_longer_than_signed_is_413_and_stores_nothing(
    api, client, zone, store, account, image
):
    params = ask(api, zone, size=len(image) - 1).data

    refused = post_bytes(client, params, image)

    assert refused.status_code == 413, refused.content
    assert b"signed" in refused.content
    ref = TemplateStoreRef.objects.get(template__uuid=params["id"])
    assert (ref.download_state, ref.state, ref.lease_owner) == ("UPLOAD_ERROR", "ALLOCATED", "")
    assert not any(p.is_file() for p in Path(store.path).rglob("*"))
    account.refresh_from_db()
    assert account.used_secondary_bytes == len(image) - 1, "only what was signed stays charged"


def test_an_upload_stops_at_the_accounts_remaining_quota(api, client, zone, store, account, image):
    Account.objects.filter(pk=account.pk).update(max_secondary_bytes=len(image) // 2)
    params = ask(api, zone).data  # no size given: only the quota bounds it

    refused = post_bytes(client, params, image)

    assert refused.status_code == 413
    assert b"max_secondary_bytes" in refused.content
    assert not any(p.is_file() for p in Path(store.path).rglob("*"))
    account.refresh_from_db()
    assert account.used_secondary_bytes == 0
