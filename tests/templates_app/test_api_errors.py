"""What the schemathesis run (tests/test_api_fuzz.py) found, one regression test each:
deletes of things still in use, error answers the schema documents, and shapes it got wrong."""

import pytest
from drf_spectacular.generators import SchemaGenerator

from agents_app.agent import heartbeat
from templates_app.models import Account, ImageStore, Zone
from tests.templates_app.factories import AccountFactory, TemplateFactory, ZoneFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def openapi():
    return SchemaGenerator().get_schema(request=None, public=True)


def test_delete_of_a_zone_with_an_image_store_is_a_409_naming_it(admin_api, store):
    answer = admin_api.delete(f"/api/v1/zones/{store.zone.uuid}/")
    assert answer.status_code == 409
    assert answer.json()["code"] == "in_use"
    assert "image store 'zone-a/store-a'" in answer.json()["detail"]
    assert Zone.objects.filter(pk=store.zone.pk).exists()
    assert ImageStore.objects.filter(pk=store.pk).exists()


def test_delete_of_a_zone_with_a_host_names_the_host(admin_api):
    # The holder lives in agents_app, which the catalogue never imports.
    zone = ZoneFactory(name="zone-h")
    heartbeat.host_register(name="kvm-9", zone=zone, libvirt_uri="test:///default")
    answer = admin_api.delete(f"/api/v1/zones/{zone.uuid}/")
    assert answer.status_code == 409
    assert "host 'kvm-9'" in answer.json()["detail"]
    assert Zone.objects.filter(pk=zone.pk).exists()


def test_delete_of_an_unused_zone_still_works(admin_api):
    zone = ZoneFactory(name="empty")
    assert admin_api.delete(f"/api/v1/zones/{zone.uuid}/").status_code == 204
    assert not Zone.objects.filter(pk=zone.pk).exists()


def test_delete_of_an_image_store_with_copies_is_a_409_naming_the_template(admin_api, register):
    template = register(name="held")
    store = template.store_refs.get().store
    answer = admin_api.delete(f"/api/v1/image-stores/{store.uuid}/")
    assert answer.status_code == 409
    assert "held" in answer.json()["detail"]
    assert ImageStore.objects.filter(pk=store.pk).exists()


def test_delete_of_an_account_with_templates_is_a_409_naming_them(admin_api):
    account = AccountFactory(name="owner")
    for n in range(7):
        TemplateFactory(account=account, name=f"t{n}")
    answer = admin_api.delete(f"/api/v1/accounts/{account.uuid}/")
    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert detail.startswith("cannot delete account 'owner': still used by template ")
    assert detail.endswith("and 2 more")
    assert Account.objects.filter(pk=account.pk).exists()


def test_an_unmatched_api_url_answers_json_404(admin_api):
    answer = admin_api.get("/api/v1/events/1.5e-3/x/")
    assert answer.status_code == 404
    assert answer.json() == {"detail": "Not found.", "code": "not_found"}


def test_a_validation_error_about_no_field_is_an_object(admin_api, register):
    template = register()
    answer = admin_api.get(f"/api/v1/templates/{template.uuid}/versions/?search=a%00b")
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid"
    assert "Null characters" in answer.json()["detail"]


def test_every_operation_documents_its_error_answers(openapi):
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"401", "403"} <= codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            if method in ("post", "put", "patch", "delete"):
                assert {"400", "409"} <= codes, (method, path)


def test_template_delete_documents_its_200_body(openapi, api, register):
    template = register()
    responses = openapi["paths"]["/api/v1/templates/{id}/"]["delete"]["responses"]
    assert "204" not in responses
    assert "content" in responses["200"]
    assert api.delete(f"/api/v1/templates/{template.uuid}/").status_code == 200


def test_unpaginated_lists_are_documented_as_lists(openapi):
    references = openapi["paths"]["/api/v1/templates/{id}/references/"]["get"]["responses"]
    assert "$ref" in references["200"]["content"]["application/json"]["schema"], "an object"
    for path in (
        "/api/v1/templates/{id}/versions/",
        "/api/v1/vms/{id}/snapshots/",
    ):
        schema = openapi["paths"][path]["get"]["responses"]["200"]["content"]
        assert schema["application/json"]["schema"]["type"] == "array", path


def test_nullable_fields_are_documented_nullable(openapi):
    components = openapi["components"]["schemas"]
    assert components["TemplateVersion"]["properties"]["base_template"]["nullable"]
    assert components["VirtualMachine"]["properties"]["host"]["nullable"]
    assert components["VirtualMachine"]["properties"]["pool"]["nullable"]


def test_gc_sweep_result_documents_only_what_the_sweep_returns(openapi, admin_api):
    answer = admin_api.post("/api/v1/gc/sweep/", {"dry_run": True}, format="json")
    documented = openapi["components"]["schemas"]["GcSweepResult"]["required"]
    assert set(documented) == set(answer.json())
