"""The REST contract: registration, listing with templatefilter, delete/reactivate, references."""

import pytest
from django.urls import reverse

from agents_app import services as vm_services
from templates_app import services
from templates_app.models import Template, TemplateDetail, TemplateStoreRef

pytestmark = pytest.mark.django_db

LIST = "/api/v1/templates/"


def detail_url(template) -> str:
    return f"/api/v1/templates/{template.uuid}/"


def payload(zone, **overrides):
    body = {
        "name": "ubuntu-24.04",
        "format": "QCOW2",
        "url": "https://mirror.example/noble.qcow2",
        "checksum": "{SHA-256}" + "ab" * 32,
        "os_type": "Ubuntu 24.04",
        "zones": [str(zone.uuid)],
        "details": {"HTTP_HEADER": "X-Token:abc"},
    }
    body.update(overrides)
    return body


def test_register_returns_the_template_with_public_id_and_copies(api, zone, store):
    response = api.post(LIST, payload(zone), format="json")

    assert response.status_code == 201, response.data
    body = response.data
    template = Template.objects.get(uuid=body["id"])
    assert body["state"] == "ACTIVE"
    assert body["removed_at"] is None
    assert body["references"] == 0
    assert body["checksum"] == "{SHA-256}" + "ab" * 32
    assert body["zones"] == [str(zone.uuid)]
    assert body["details"] == [{"key": "HTTP_HEADER", "value": "X-Token:abc"}]
    assert [c["zone"] for c in body["copies"]] == [str(zone.uuid)]
    assert body["copies"][0]["download_state"] == "NOT_DOWNLOADED"
    assert (body["copies"][0]["store"], body["copies"][0]["install_path"]) == (None, None)
    assert template.unique_name.startswith("ubuntu-2404-")


def test_direct_download_gets_one_bypassed_ready_row_and_no_store_copy(api, zone, store):
    response = api.post(LIST, payload(zone, direct_download=True), format="json")

    assert response.status_code == 201, response.data
    ref = TemplateStoreRef.objects.get(template__uuid=response.data["id"])
    assert (ref.store, ref.download_state, ref.state) == (None, "BYPASSED", "READY")


def test_public_template_goes_to_every_store_private_to_one(api, admin_api, zone, store, tmp_path):
    from tests.templates_app.factories import ImageStoreFactory

    ImageStoreFactory(zone=zone, name="store-b", path=str(tmp_path))
    private = api.post(LIST, payload(zone, name="private"), format="json").data
    public = api.post(LIST, payload(zone, name="public", is_public=True), format="json").data
    assert len(private["copies"]) == 1
    assert len(public["copies"]) == 2


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("checksum", "{MD5}abc", "MD5 checksum must have 32 hex digits"),
        ("checksum", "{CRC32}abcd", "unknown checksum algorithm"),
        ("checksum", "xyz", "bare hex digest"),
        ("url", "ftp://mirror.example/a.qcow2", "unsupported URL scheme 'ftp'"),
        ("url", "file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("name", "x" * 129, "no more than 128 characters"),
        ("format", "EXE", "is not a valid choice"),
        ("zones", ["00000000-0000-0000-0000-000000000000"], "unknown zone id"),
        ("zones", ["not-a-uuid"], "must be a UUID"),
        ("zones", [], "give at least one zone"),
        ("is_featured", True, "only administrators may feature"),
        ("details", "oops", "details must be an object"),
    ],
)
def test_bad_input_is_a_400_naming_field_and_rule(api, zone, store, field, value, rule):
    response = api.post(LIST, payload(zone, **{field: value}), format="json")

    assert response.status_code == 400
    assert field in response.data, response.data
    assert rule in str(response.data[field])
    assert Template.objects.count() == 0
    assert TemplateDetail.objects.count() == 0


def test_iso_must_have_iso_format(api, zone, store):
    response = api.post(LIST, payload(zone, kind="ISO", format="QCOW2"), format="json")
    assert response.status_code == 400
    assert "an ISO must have format ISO" in str(response.data["format"])


def test_exceeded_template_limit_is_refused_naming_it(api, account, zone, store):
    account.max_templates = 0
    account.save()
    response = api.post(LIST, payload(zone), format="json")
    assert response.status_code == 400
    assert "max_templates" in response.data
    assert Template.objects.count() == 0


def test_delete_deactivates_and_reports_references(api, register, make_vm):
    template = register()
    make_vm(template, name="a")
    make_vm(template, name="b")

    response = api.delete(detail_url(template))

    assert response.status_code == 200
    assert response.data["references"] == 2
    assert response.data["template"]["state"] == "INACTIVE"
    listed = api.get(LIST).data["results"]
    assert template.name not in [t["name"] for t in listed]


def test_new_vm_on_inactive_template_is_409_naming_the_state(api, register, zone):
    template = register()
    api.delete(detail_url(template))

    response = api.post(
        "/api/v1/vms/",
        {"name": "vm", "template": str(template.uuid), "zone": str(zone.uuid), "deploy": False},
    )

    assert response.status_code == 409
    assert "INACTIVE" in response.data["detail"]


def test_reactivate_is_for_staff_only(api, admin_api, register):
    template = register()
    api.delete(detail_url(template))

    assert api.post(detail_url(template) + "reactivate/").status_code == 403
    response = admin_api.post(detail_url(template) + "reactivate/")
    assert response.status_code == 200
    assert response.data["state"] == "ACTIVE"


def test_reactivate_after_removal_is_409(admin_api, register, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)
    services.gc_sweep()
    response = admin_api.post(detail_url(template) + "reactivate/")
    assert response.status_code == 409
    assert "REMOVED" in response.data["detail"]


def test_references_lists_live_vms_only(api, register, make_vm, user):
    template = register()
    keep = make_vm(template, name="keep")
    gone = make_vm(template, name="gone")
    vm_services.vm_destroy(vm_id=gone.pk, actor=user, expunge=True)

    response = api.get(detail_url(template) + "references/")

    assert response.status_code == 200
    assert [(r["kind"], r["name"]) for r in response.data["references"]] == [("vm", keep.name)]
    assert response.data["counts"] == {"vm": 1, "pinned_pool_copy": 0, "vm_pool": 0, "channel": 0}


def test_patch_changes_editable_fields_only(api, register):
    template = register()
    response = api.patch(detail_url(template), {"name": "renamed", "os_type": "Debian"})
    assert response.status_code == 200
    assert response.data["name"] == "renamed"
    assert response.data["unique_name"] == template.unique_name, "file names never move"

    response = api.patch(detail_url(template), {"url": "https://elsewhere.example/x"})
    assert response.status_code == 400
    assert "url" in response.data
    response = api.patch(detail_url(template), {"is_featured": True})
    assert response.status_code == 400
    assert "only administrators" in str(response.data["is_featured"])


def test_staff_can_list_inactive_templates_by_state(admin_api, api, register, user):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)

    staff = admin_api.get(LIST, {"state": "INACTIVE", "templatefilter": "all"}).data
    assert [t["id"] for t in staff["results"]] == [str(template.uuid)]
    assert api.get(LIST, {"state": "INACTIVE"}).data["results"] == []


def test_gc_sweep_endpoint_is_staff_only_and_reports(
    api, admin_api, register, make_vm, user, sweeps_run_here
):
    held = register(name="held")
    make_vm(held)
    free = register(name="free")
    for template in (held, free):
        services.template_deactivate(template_id=template.pk, actor=user)

    assert api.post("/api/v1/gc/sweep/", {"dry_run": True}, format="json").status_code == 403
    dry = admin_api.post("/api/v1/gc/sweep/", {"dry_run": True}, format="json")
    assert dry.status_code == 200
    assert [r["name"] for r in dry.data["removed"]] == ["free"]
    assert Template.objects.get(pk=free.pk).state == "INACTIVE"

    with sweeps_run_here():
        queued = admin_api.post("/api/v1/gc/sweep/", {"dry_run": False}, format="json")
    assert queued.status_code == 202
    real = admin_api.get(queued["Location"]).data
    assert real["state"] == "DONE"
    assert real["result"]["removed_count"] == 1
    assert [h["name"] for h in real["result"]["held"]] == ["held"]
    assert Template.objects.get(pk=free.pk).state == "REMOVED"


def test_gc_sweep_rejects_bad_dry_run(admin_api):
    response = admin_api.post("/api/v1/gc/sweep/", {"dry_run": "maybe"}, format="json")
    assert response.status_code == 400
    assert "dry_run" in response.data


def test_list_costs_the_same_queries_for_one_and_many(api, register, django_assert_max_num_queries):
    register(name="first")
    with django_assert_max_num_queries(6):
        assert len(api.get(LIST).data["results"]) == 1
    for n in range(30):
        register(name=f"t{n}", details={"k": str(n)})
    with django_assert_max_num_queries(6):
        assert len(api.get(LIST).data["results"]) == 31


def test_events_endpoint_shows_state_changes(api, register, user):
    template = register()
    api.delete(detail_url(template))
    events = api.get("/api/v1/events/", {"object_id": str(template.uuid)}).data["results"]
    assert [(e["from_state"], e["to_state"], e["actor"]) for e in events] == [
        ("ACTIVE", "INACTIVE", "alice"),
        ("", "ACTIVE", "alice"),
    ]


def test_schema_and_docs_are_served(api):
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.validation import validate_schema

    validate_schema(SchemaGenerator().get_schema(request=None, public=True))
    assert api.get(reverse("schema")).status_code == 200
    docs = api.get(reverse("api-docs"))
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1/x.qcow2", "denied network 127.0.0.0/8"),
        ("http://2130706433/x.qcow2", "denied network 127.0.0.0/8"),
        ("http://169.254.169.254/latest/meta-data", "denied network 169.254.0.0/16"),
        ("http://user:pw@mirror.example/x.qcow2", "credentials"),
    ],
)
def test_registration_applies_the_outbound_url_rules(api, zone, store, url, rule):
    response = api.post(LIST, payload(zone, url=url), format="json")
    assert response.status_code == 400
    assert rule in str(response.data["url"])
    assert Template.objects.count() == 0


def test_direct_download_needs_a_checksum_unless_metalink(api, zone, store, httpserver, settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    body = payload(zone, direct_download=True, checksum="")
    response = api.post(LIST, body, format="json")
    assert response.status_code == 400
    assert "required for direct download" in str(response.data["checksum"])
    listing = (
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="x">'
        f'<hash type="sha-256">{"ab" * 32}</hash>'
        f"<url>{httpserver.url_for('/x.qcow2')}</url></file></metalink>"
    )
    httpserver.expect_request("/x.meta4").respond_with_data(listing)
    response = api.post(LIST, {**body, "url": httpserver.url_for("/x.meta4")}, format="json")
    assert response.status_code == 201, response.data
    assert response.data["checksum"] == "{SHA-256}" + "ab" * 32


@pytest.mark.parametrize(
    "details",
    [
        {"HTTP_HEADER": "X-A:b\r\nHost: evil"},
        {"HTTP_HEADER:Host": "evil.example"},
        [{"key": "HTTP_HEADER", "value": "Proxy-Authorization:x"}],
    ],
    ids=["crlf", "host", "proxy"],
)
def test_header_injection_is_refused_at_registration(api, zone, store, details):
    response = api.post(LIST, payload(zone, details=details), format="json")
    assert response.status_code == 400
    assert "details" in response.data
    assert Template.objects.count() == 0
