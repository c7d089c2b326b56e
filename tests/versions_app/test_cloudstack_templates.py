"""The CloudStack facade's templates and ISOs, driven by the real `cs` client against a live
server and compared with the REST API's view of the same templates."""

import hashlib
import subprocess
import time

import pytest
from cs import CloudStackApiException
from rest_framework.test import APIClient

from templates_app.cloudstack.models import AsyncJob
from templates_app.cloudstack.ostypes import os_type_id
from templates_app.copies import store_copy_download
from templates_app.models import Template, TemplateStoreRef
from tests.cloudstack import call, cs_client, keys_for
from tests.templates_app import test_celery_worker
from tests.templates_app.factories import ImageStoreFactory, ZoneFactory
from versions_app import services as version_services

DEBIAN = "Debian GNU/Linux 12 (64-bit)"


def rest_view(user, template_id) -> dict:
    api = APIClient()
    api.force_authenticate(user)
    response = api.get(f"/api/v1/templates/{template_id}/")
    assert response.status_code == 200, response.data
    return response.json()


@pytest.fixture
def image(httpserver, settings, tmp_path):
    """A real 16 MiB qcow2 served over HTTP."""
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    path = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "16M"], check=True)
    data = path.read_bytes()
    httpserver.expect_request("/img.qcow2").respond_with_data(data)
    return httpserver.url_for("/img.qcow2"), "{SHA-256}" + hashlib.sha256(data).hexdigest()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "version"), [("get", 3), ("post", 2)])
def test_register_then_list_matches_the_rest_api(live_server, user, store, image, method, version):
    url, checksum = image
    client = cs_client(live_server.url, keys_for(user), method=method, version=version)

    registered = client.registerTemplate(
        name="debian-12",
        displaytext="Debian 12 cloud image",
        format="qcow2",
        hypervisor="KVM",
        url=url + "?token=s3cret",
        zoneid=str(store.zone.uuid),
        ostypeid=os_type_id(DEBIAN),
        checksum=checksum,
        details={"key": "HTTP_HEADER", "value": "X-Auth:abc"},
    )
    [row] = registered["template"]
    before = client.listTemplates(templatefilter="self")["template"]
    store_copy_download(ref_id=TemplateStoreRef.objects.get(template__uuid=row["id"]).pk)
    [listed] = client.listTemplates(templatefilter="self", zoneid=str(store.zone.uuid))["template"]

    rest = rest_view(user, row["id"])
    assert registered["count"] == 1 and before[0]["isready"] is False
    assert listed["id"] == rest["id"]
    assert (listed["name"], listed["displaytext"], listed["format"]) == (
        rest["name"],
        rest["display_text"],
        rest["format"],
    )
    assert listed["checksum"] == rest["checksum"] == checksum
    assert listed["ostypename"] == rest["os_type"] == DEBIAN
    assert listed["ostypeid"] == os_type_id(DEBIAN)
    assert listed["zoneid"] == str(store.zone.uuid) == rest["zones"][0]
    assert listed["zonename"] == store.zone.name
    assert listed["isready"] is True and listed["status"] == "Download Complete"
    assert listed["size"] == rest["copies"][0]["size"] == 16 * 1024 * 1024
    assert listed["account"] == rest["account_name"] == "acme"
    assert listed["details"] == {"HTTP_HEADER": "X-Auth:abc"}, "the owner sees its secrets"
    assert listed["url"] == rest["url"]
    assert listed["created"].endswith("+0000") and len(listed["created"]) == 24
    assert listed["templatetype"] == "USER" and listed["crossZones"] is False


@pytest.mark.django_db
@pytest.mark.parametrize("zones", [{"zoneid": "-1"}, {"zoneids": "-1"}, {}])
def test_a_template_in_every_zone_is_one_row_per_zone(user, store, zones):
    """zoneid=-1, and no zone at all (CloudStack's getZoneIds() is null then: Terraform's
    cloudstack_template without `zone` registers so), is every zone."""
    other_zone = ZoneFactory(name="zone-b")
    ImageStoreFactory(zone=other_zone, name="store-b", path=store.path)
    pair = keys_for(user)

    status, body = call(
        pair,
        "registerTemplate",
        name="everywhere",
        format="QCOW2",
        hypervisor="KVM",
        url="https://mirror.example/e.qcow2",
        **zones,
    )
    only_b = call(pair, "listTemplates", templatefilter="self", zoneid=str(other_zone.uuid))[1]

    assert status == 200, body
    assert body["count"] == 2
    assert {r["zonename"] for r in body["template"]} == {"zone-a", "zone-b"}
    assert {r["id"] for r in body["template"]} == {str(Template.objects.get().uuid)}
    assert all(r["crossZones"] for r in body["template"])
    assert [r["zonename"] for r in only_b["template"]] == ["zone-b"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "status", "text"),
    [
        ({"url": None}, 431, "due to missing parameter url"),
        ({"format": "EXE"}, 431, "format: unknown format 'EXE'"),
        ({"hypervisor": "XenServer"}, 431, "hypervisor: unknown hypervisor 'XENSERVER'"),
        ({"zoneid": "00000000-0000-0000-0000-000000000000"}, 431, "Invalid parameter zoneid"),
        ({"zoneid": "zone-a"}, 431, "Invalid parameter zoneid value=zone-a"),
        ({"ostypeid": "00000000-0000-0000-0000-000000000000"}, 431, "Invalid parameter ostypeid"),
        ({"checksum": "{MD5}abc"}, 431, "checksum: MD5 checksum must have 32 hex digits"),
        ({"url": "file:///etc/passwd"}, 431, "url: unsupported URL scheme 'file'"),
        ({"isfeatured": "true"}, 431, "isfeatured: only administrators may feature"),
        ({"ispublic": "maybe"}, 431, "Invalid parameter ispublic value=maybe"),
        ({"name": "x" * 300}, 431, "Invalid parameter name"),
    ],
)
def test_bad_registrations_are_431_naming_the_parameter_and_write_nothing(
    user, store, params, status, text
):
    base = {
        "name": "t",
        "format": "QCOW2",
        "hypervisor": "KVM",
        "url": "https://mirror.example/t.qcow2",
        "zoneid": str(store.zone.uuid),
    }
    merged = {k: v for k, v in {**base, **params}.items() if v is not None}

    got_status, body = call(keys_for(user), "registerTemplate", method="post", **merged)

    assert got_status == status == body["errorcode"], body
    assert text in body["errortext"]
    assert Template.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_delete_is_an_async_job_the_cs_client_waits_for(live_server, user, register):
    template = register()
    client = cs_client(live_server.url, keys_for(user))

    started = client.deleteTemplate(id=str(template.uuid))
    result = client.deleteTemplate(id=str(register(name="second").uuid), fetch_result=True)
    job = client.queryAsyncJobResult(jobid=started["jobid"])

    assert started["id"] == str(template.uuid)
    assert result == {"success": True}
    assert (job["jobstatus"], job["jobresultcode"], job["jobresult"]) == (1, 0, {"success": True})
    assert job["jobinstancetype"] == "Template" and job["jobinstanceid"] == str(template.uuid)
    assert rest_view(user, template.uuid)["state"] in ("INACTIVE", "REMOVED")
    assert client.listTemplates(templatefilter="self") == {}


@pytest.mark.django_db
def test_update_template_changes_what_the_rest_api_shows(user, register):
    template = register()
    pair = keys_for(user)

    status, body = call(
        pair,
        "updateTemplate",
        id=str(template.uuid),
        name="renamed",
        displaytext="new text",
        ostypeid=os_type_id(DEBIAN),
    )
    bad = call(pair, "updateTemplate", id=str(template.uuid), name="  ")

    rest = rest_view(user, template.uuid)
    assert status == 200
    assert body["template"]["name"] == rest["name"] == "renamed"
    assert rest["display_text"] == "new text" and rest["os_type"] == DEBIAN
    assert bad[0] == 431 and bad[1]["errortext"] == "name: the name cannot be blank"


@pytest.mark.django_db
def test_list_shows_the_newest_version_of_a_lineage_and_any_version_by_id(user, register, store):
    base = register(name="app")
    version = version_services.template_version_create(
        base_template_id=base.pk, actor=user, version_name="v2"
    )
    pair = keys_for(user)

    listed = call(pair, "listTemplates", templatefilter="self")[1]
    by_id = call(pair, "listTemplates", templatefilter="self", id=str(base.uuid))[1]

    assert [r["id"] for r in listed["template"]] == [str(version.uuid)]
    assert [r["id"] for r in by_id["template"]] == [str(base.uuid)]


@pytest.mark.django_db
def test_isos_register_list_and_delete(user, store):
    pair = keys_for(user)

    status, body = call(
        pair,
        "registerIso",
        name="installer",
        url="https://mirror.example/installer.iso",
        zoneid=str(store.zone.uuid),
    )
    [iso] = body["iso"]
    templates = call(pair, "listTemplates", templatefilter="self")[1]
    isos = call(pair, "listIsos", isofilter="self")[1]
    wrong_kind = call(pair, "deleteTemplate", id=iso["id"])
    deleted = call(pair, "deleteIso", id=iso["id"])

    assert status == 200 and iso["format"] == "ISO" and iso["bootable"] is True
    assert templates == {}
    assert [r["id"] for r in isos["iso"]] == [iso["id"]]
    assert wrong_kind[0] == 431
    assert deleted[0] == 200
    assert Template.objects.get().state in ("INACTIVE", "REMOVED")


@pytest.mark.django_db
def test_bad_template_filter_and_page_size(user):
    pair = keys_for(user)
    assert call(pair, "listTemplates")[0] == 431
    bad = call(pair, "listTemplates", templatefilter="mine")
    assert bad[0] == 431 and "Invalid parameter templatefilter value=mine" in bad[1]["errortext"]
    assert call(pair, "listTemplates", templatefilter="self", pagesize="0")[0] == 431


@pytest.mark.django_db
def test_list_templates_costs_a_constant_number_of_queries(
    user, register, store, django_assert_max_num_queries
):
    pair = keys_for(user)
    for n in range(3):
        register(name=f"t{n}", details=[{"key": "k", "value": "v"}])
    with django_assert_max_num_queries(12) as few:
        call(pair, "listTemplates", templatefilter="self")
    for n in range(3, 25):
        register(name=f"t{n}", details=[{"key": "k", "value": "v"}])
    with django_assert_max_num_queries(len(few.captured_queries)):
        status, body = call(pair, "listTemplates", templatefilter="self", page="1", pagesize="20")
    assert status == 200 and body["count"] == 25 and len(body["template"]) == 20


@pytest.mark.django_db(transaction=True)
def test_the_cs_client_sees_a_bad_delete_as_431(live_server, user):
    """CloudStack's own text and code: Terraform's provider treats a delete answered with
    "Invalid parameter id value=ID due to incorrect long value format, or entity does not
    exist" as already gone."""
    missing = "00000000-0000-0000-0000-000000000000"
    client = cs_client(live_server.url, keys_for(user), method="post")
    with pytest.raises(CloudStackApiException) as refused:
        client.deleteTemplate(id=missing)
    assert refused.value.response.status_code == 431
    assert refused.value.error["cserrorcode"] == 9999
    assert (
        f"Invalid parameter id value={missing} due to incorrect long value format, "
        "or entity does not exist"
    ) in refused.value.error["errortext"]
    assert AsyncJob.objects.count() == 0


@pytest.mark.django_db
def test_upload_params_then_the_bytes_make_a_ready_template(user, store, client, tmp_path):
    path = tmp_path / "u.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "8M"], check=True)
    data = path.read_bytes()
    pair = keys_for(user)

    status, body = call(
        pair,
        "getUploadParamsForTemplate",
        name="uploaded",
        format="qcow2",
        hypervisor="KVM",
        zoneid=str(store.zone.uuid),
        checksum="{SHA-256}" + hashlib.sha256(data).hexdigest(),
        size=str(len(data)),
    )
    params = body["getuploadparams"]
    path_only = "/" + params["postURL"].split("://", 1)[1].split("/", 1)[1]
    sent = client.generic(
        "POST",
        path_only,
        data=data,
        content_type="application/octet-stream",
        headers={
            "X-Metadata": params["metadata"],
            "X-Expires": params["expires"],
            "X-Signature": params["signature"],
        },
    )
    [row] = call(pair, "listTemplates", templatefilter="self")[1]["template"]
    no_zone = call(pair, "getUploadParamsForTemplate", name="x", format="QCOW2")

    assert status == 200 and set(params) == {"id", "postURL", "metadata", "expires", "signature"}
    assert sent.status_code == 201, sent.content
    assert (row["id"], row["isready"], row["size"]) == (params["id"], True, 8 * 1024 * 1024)
    assert no_zone[0] == 431 and "missing parameter zoneid" in no_zone[1]["errortext"]
    assert Template.objects.count() == 1


@pytest.fixture
def second_zone(store):
    zone = ZoneFactory(name="zone-b")
    ImageStoreFactory(zone=zone, name="store-b", path=store.path + "-b")
    from pathlib import Path

    Path(store.path + "-b").mkdir()
    return zone


@pytest.mark.django_db
def test_copy_template_is_a_job_done_when_the_new_zones_copy_is_ready(
    user, register, image, second_zone
):
    url, checksum = image
    template = register(url=url, checksum=checksum)
    store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
    pair = keys_for(user)

    status, started = call(
        pair, "copyTemplate", id=str(template.uuid), destzoneid=str(second_zone.uuid)
    )
    pending = call(pair, "queryAsyncJobResult", jobid=started["jobid"])[1]
    new_copy = TemplateStoreRef.objects.get(template=template, store__zone=second_zone)
    store_copy_download(ref_id=new_copy.pk)
    done = call(pair, "queryAsyncJobResult", jobid=started["jobid"])[1]
    listed = call(pair, "listTemplates", templatefilter="self")[1]["template"]
    again = call(pair, "copyTemplate", id=str(template.uuid), destzoneid=str(second_zone.uuid))

    assert status == 200 and started["id"] == str(template.uuid)
    assert pending["jobstatus"] == 0
    assert done["jobstatus"] == 1, done
    assert done["jobresult"]["template"]["zoneid"] == str(second_zone.uuid)
    assert done["jobresult"]["template"]["isready"] is True
    assert {(r["zonename"], r["isready"]) for r in listed} == {("zone-a", True), ("zone-b", True)}
    assert sorted(rest_view(user, template.uuid)["zones"]) == sorted(
        [str(template.zones.get(name="zone-a").uuid), str(second_zone.uuid)]
    )
    assert again[0] == 431
    assert again[1]["errortext"] == "destzoneid: the template is already in each of these zones"


@pytest.mark.django_db
def test_a_copy_whose_download_fails_is_a_failed_job(
    user, register, httpserver, settings, second_zone
):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    httpserver.expect_request("/gone.qcow2").respond_with_data("gone", status=404)
    template = register(url=httpserver.url_for("/gone.qcow2"))
    pair = keys_for(user)

    _, started = call(
        pair, "copyTemplate", id=str(template.uuid), destzoneids=str(second_zone.uuid)
    )
    store_copy_download(
        ref_id=TemplateStoreRef.objects.get(template=template, store__zone=second_zone).pk
    )
    failed = call(pair, "queryAsyncJobResult", jobid=started["jobid"])[1]

    assert (failed["jobstatus"], failed["jobresultcode"]) == (2, 530)
    assert "404" in failed["jobresult"]["errortext"]


@pytest.mark.django_db
def test_direct_download_registration_is_ready_at_once_and_needs_a_checksum(user, store):
    pair = keys_for(user)
    base = {
        "name": "dd",
        "format": "QCOW2",
        "hypervisor": "KVM",
        "url": "https://mirror.example/dd.qcow2",
        "zoneid": str(store.zone.uuid),
        "directdownload": "true",
    }

    refused = call(pair, "registerTemplate", **base)
    status, body = call(pair, "registerTemplate", checksum="{SHA-256}" + "a" * 64, **base)

    assert refused[0] == 431
    assert refused[1]["errortext"].startswith("checksum: a checksum ({ALGO}hex) is required")
    [row] = body["template"]
    assert status == 200 and row["directdownload"] is True
    assert (row["isready"], row["status"]) == (True, "Download Complete")
    assert Template.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_cs_client_pages_through_a_listing(live_server, user, register):
    for n in range(7):
        register(name=f"t{n}")
    client = cs_client(live_server.url, keys_for(user))

    everything = client.listTemplates(templatefilter="self", fetch_list=True)
    page_two = client.listTemplates(templatefilter="self", page=2, pagesize=3)

    assert sorted(row["name"] for row in everything) == [f"t{n}" for n in range(7)]
    assert page_two["count"] == 7 and len(page_two["template"]) == 3


@pytest.mark.django_db
def test_template_permissions_share_and_publish_as_the_rest_api_shows(
    user, other_user, other_account, register
):
    template = register(name="team")
    owner, other = keys_for(user), keys_for(other_user)

    shared = call(
        owner, "updateTemplatePermissions", id=str(template.uuid), op="add", accounts="globex"
    )
    listed = call(owner, "listTemplatePermissions", id=str(template.uuid))[1]
    seen = call(other, "listTemplates", templatefilter="sharedexecutable")[1]
    refused = call(
        owner,
        "updateTemplatePermissions",
        id=str(template.uuid),
        op="reset",
        isfeatured="true",
    )
    unknown = call(
        owner, "updateTemplatePermissions", id=str(template.uuid), op="add", accounts="nobody"
    )
    hostile = call(
        other, "updateTemplatePermissions", id=str(template.uuid), op="reset", ispublic="true"
    )
    public = call(owner, "updateTemplatePermissions", id=str(template.uuid), ispublic="true")

    api = APIClient()
    api.force_authenticate(user)
    rest = api.get(f"/api/v1/templates/{template.uuid}/permissions/").json()
    assert shared == (200, {"success": True})
    assert listed["templatepermission"]["account"] == ["globex"]
    assert rest["accounts"] == [str(other_account.uuid)], "the reset refused with it is undone"
    assert [r["id"] for r in seen["template"]] == [str(template.uuid)]
    assert refused[0] == 431
    assert refused[1]["errortext"] == "isfeatured: only administrators may change this"
    assert (
        unknown[0] == 431 and "Invalid parameter accounts value=nobody" in unknown[1]["errortext"]
    )
    assert hostile[0] == 431 and "Invalid parameter id" in hostile[1]["errortext"]
    assert public == (200, {"success": True})
    assert rest_view(user, template.uuid)["is_public"] is True


worker = test_celery_worker.worker


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_copy_job_is_finished_by_the_storage_worker_the_cs_client_waits_on(
    live_server, worker, user, store, image, second_zone
):
    """Register, then copy to another zone: a real Celery worker downloads both copies, and the
    cs client's wait on the copy job ends when the worker has made the new zone's copy READY."""
    url, checksum = image
    client = cs_client(live_server.url, keys_for(user))
    [row] = client.registerTemplate(
        name="debian",
        format="QCOW2",
        hypervisor="KVM",
        url=url,
        checksum=checksum,
        zoneid=str(store.zone.uuid),
    )["template"]
    deadline = time.monotonic() + 60
    while not client.listTemplates(templatefilter="self", id=row["id"])["template"][0]["isready"]:
        assert time.monotonic() < deadline, "the worker did not download the template"
        time.sleep(0.2)

    copied = client.copyTemplate(id=row["id"], destzoneid=str(second_zone.uuid), fetch_result=True)[
        "template"
    ]

    assert (copied["zoneid"], copied["isready"]) == (str(second_zone.uuid), True)
    assert copied["size"] == 16 * 1024 * 1024
    copies = rest_view(user, row["id"])["copies"]
    assert sorted((c["zone"], c["state"]) for c in copies) == sorted(
        [(str(store.zone.uuid), "READY"), (str(second_zone.uuid), "READY")]
    )


@pytest.mark.django_db
@pytest.mark.parametrize("size", [1, 2, 4, 5, 500])
def test_pages_of_per_zone_rows_add_up_to_the_whole_listing(user, register, store, size):
    zone_b = ZoneFactory(name="zone-b")
    zone_c = ZoneFactory(name="zone-c")
    for zone in (zone_b, zone_c):
        ImageStoreFactory(zone=zone, name=f"s-{zone.name}", path=store.path)
    register(name="everywhere", cross_zones=True, zones=[])
    register(name="one")
    register(name="two", zones=[store.zone, zone_b])
    pair = keys_for(user)

    whole = call(pair, "listTemplates", templatefilter="self")[1]
    pages, number = [], 1
    while True:
        body = call(pair, "listTemplates", templatefilter="self", page=number, pagesize=size)[1]
        assert body["count"] == 6
        if "template" not in body:
            break
        pages.extend(body["template"])
        number += 1
    in_b = call(pair, "listTemplates", templatefilter="self", zoneid=str(zone_b.uuid), pagesize=1)

    key = [(r["id"], r["zonename"]) for r in whole["template"]]
    assert whole["count"] == len(key) == 6
    assert [(r["id"], r["zonename"]) for r in pages] == key
    assert in_b[1]["count"] == 2 and len(in_b[1]["template"]) == 1


@pytest.mark.django_db(transaction=True)
def test_terraforms_registration_without_a_zone_is_every_zone(live_server, user, store):
    """cloudstack_template with no `zone`: registerTemplate by POST without zoneid, the OS
    type found by `listOsTypes description=`, then read back with `listTemplates
    templatefilter=executable id= showunique=true` (an undeclared parameter, ignored)."""
    ImageStoreFactory(zone=ZoneFactory(name="zone-b"), name="store-b", path=store.path)
    client = cs_client(live_server.url, keys_for(user), method="post")
    [os_type] = client.listOsTypes(description=DEBIAN)["ostype"]

    registered = client.registerTemplate(
        name="tf",
        displaytext="tf",
        format="QCOW2",
        hypervisor="KVM",
        url="https://mirror.example/tf.qcow2",
        ostypeid=os_type["id"],
    )
    template_id = registered["template"][0]["id"]
    read = client.listTemplates(templatefilter="executable", id=template_id, showunique="true")

    assert Template.objects.get(uuid=template_id).cross_zones is True
    assert read["count"] == 2 and {r["zonename"] for r in read["template"]} == {"zone-a", "zone-b"}
    assert {r["ostypeid"] for r in read["template"]} == {os_type["id"]}
