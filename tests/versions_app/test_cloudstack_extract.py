"""extractTemplate / extractIso through the real `cs` client against a live server, with a
real storage worker copying a direct-download template into a store first."""

import hashlib
import subprocess

import pytest
import requests

from templates_app import services
from templates_app.copies import store_copy_download
from templates_app.models import TemplateStoreRef
from tests.cloudstack import call, cs_client, keys_for
from tests.templates_app import test_celery_worker

worker = test_celery_worker.worker


@pytest.fixture
def image(httpserver, settings, tmp_path):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    path = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "16M"], check=True)
    data = path.read_bytes()
    httpserver.expect_request("/img.qcow2").respond_with_data(data)
    return httpserver.url_for("/img.qcow2"), "{SHA-256}" + hashlib.sha256(data).hexdigest(), data


@pytest.fixture
def storage_queue_is_private(monkeypatch, private_celery_queue):
    monkeypatch.setenv("STENCIL_STORAGE_QUEUE", private_celery_queue)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_extract_of_a_direct_download_template_waits_for_its_store_copy(
    live_server, worker, register, image, store
):
    url, checksum, data = image
    template = register(url=url, checksum=checksum, direct_download=True)

    owner = template.account.members.get()
    client = cs_client(live_server.url, keys_for(owner))

    extracted = client.extractTemplate(
        id=str(template.uuid), mode="HTTP_DOWNLOAD", zoneid=str(store.zone.uuid), fetch_result=True
    )["template"]

    assert extracted["id"] == str(template.uuid) and extracted["name"] == template.name
    assert (extracted["state"], extracted["status"]) == ("DOWNLOAD_URL_CREATED",) * 2
    assert extracted["extractMode"] == "HTTP_DOWNLOAD" and extracted["uploadpercentage"] == 100
    assert (extracted["zoneid"], extracted["zonename"]) == (str(store.zone.uuid), store.zone.name)
    copy = TemplateStoreRef.objects.get(template=template, store=store)
    assert extracted["extractId"] == str(copy.pk) and copy.state == "READY"
    assert extracted["created"].endswith("+0000")
    part = requests.get(extracted["url"], headers={"Range": "bytes=0-3"}, timeout=10)
    assert part.status_code == 206 and part.content == data[:4] == b"QFI\xfb"


@pytest.mark.django_db
def test_extract_iso_and_its_refusals(user, other_user, register, store, httpserver, settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    data = bytearray(64 * 1024)
    data[0x8001 : 0x8001 + 5] = b"CD001"  # an ISO 9660 volume descriptor
    httpserver.expect_request("/tools.iso").respond_with_data(bytes(data))
    url = httpserver.url_for("/tools.iso")
    checksum = "{SHA-256}" + hashlib.sha256(data).hexdigest()
    iso = register(name="tools", kind="ISO", image_format="ISO", url=url, checksum=checksum)
    assert store_copy_download(ref_id=TemplateStoreRef.objects.get(template=iso).pk).state == (
        "READY"
    )
    pair = keys_for(user)

    started = call(pair, "extractIso", id=str(iso.uuid), mode="HTTP_DOWNLOAD")
    ftp = call(pair, "extractIso", id=str(iso.uuid), mode="FTP_UPLOAD")
    hostile = call(keys_for(other_user), "extractIso", id=str(iso.uuid), mode="HTTP_DOWNLOAD")
    job = call(pair, "queryAsyncJobResult", jobid=started[1]["jobid"])[1]
    services.template_update(template_id=iso.pk, actor=None, changes={"is_public": True})
    public = call(keys_for(other_user), "extractIso", id=str(iso.uuid), mode="HTTP_DOWNLOAD")

    assert started[0] == 200 and started[1]["id"] == str(iso.uuid)
    assert job["jobstatus"] == 1 and job["jobinstancetype"] == "Iso"
    assert job["jobresult"]["iso"]["url"].startswith("http://testserver/api/v1/extracts/")
    assert ftp[0] == 431 and "mode" in ftp[1]["errortext"]
    assert hostile[0] == public[0] == 431 and "Invalid parameter id" in hostile[1]["errortext"]
