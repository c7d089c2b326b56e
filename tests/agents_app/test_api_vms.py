"""VM records through the API: create on ACTIVE templates; destroy, recover, expunge."""

import pytest

from templates_app.models import Template

pytestmark = pytest.mark.django_db


def create_vm(api, template, zone, name="web-1"):
    return api.post(
        "/api/v1/vms/",
        {"name": name, "template": str(template.uuid), "zone": str(zone.uuid), "deploy": False},
    )


def test_vm_life_cycle_and_the_template_it_holds(api, admin_api, register, zone, sweeps_run_here):
    template = register()
    vm = create_vm(api, template, zone).data
    assert vm["state"] == "STOPPED"
    api.delete(f"/api/v1/templates/{template.uuid}/")
    base = f"/api/v1/vms/{vm['id']}/"

    assert api.post(base + "start/").data["state"] == "RUNNING"
    assert api.post(base + "destroy/").data["state"] == "DESTROYED"
    with sweeps_run_here():
        assert admin_api.post("/api/v1/gc/sweep/", {}, format="json").status_code == 202
    assert Template.objects.get(pk=template.pk).state == "INACTIVE"
    assert api.post(base + "recover/").data["state"] == "STOPPED"
    api.post(base + "destroy/", {"expunge": True}, format="json")
    assert api.get(base).data["state"] == "EXPUNGED"
    with sweeps_run_here():
        assert admin_api.post("/api/v1/gc/sweep/", {}, format="json").status_code == 202
    assert Template.objects.get(pk=template.pk).state == "REMOVED"


def test_illegal_vm_transition_is_409(api, register, zone):
    vm = create_vm(api, register(), zone).data
    response = api.post(f"/api/v1/vms/{vm['id']}/expunge/")
    assert response.status_code == 409
    assert "STOPPED" in response.data["detail"]


def test_vm_in_a_zone_the_template_is_not_in_is_400(api, register):
    from tests.templates_app.factories import ZoneFactory

    elsewhere = ZoneFactory(name="zone-b")
    response = create_vm(api, register(), elsewhere)
    assert response.status_code == 400
    assert "not available in zone" in str(response.data["zone"])


def test_vm_bad_input_names_the_field(api, register, zone):
    template = register()
    assert "name" in create_vm(api, template, zone, name="").data
    response = api.post("/api/v1/vms/", {"name": "x", "template": str(template.uuid)})
    assert response.status_code == 400
    assert "zone" in response.data


def test_vm_list_query_count_is_constant(
    api, register, zone, make_vm, django_assert_max_num_queries
):
    template = register()
    make_vm(template)
    with django_assert_max_num_queries(3):
        assert len(api.get("/api/v1/vms/").data["results"]) == 1
    for n in range(20):
        make_vm(template, name=f"vm-{n}")
    with django_assert_max_num_queries(3):
        assert len(api.get("/api/v1/vms/").data["results"]) == 21


def test_another_accounts_private_template_is_as_unknown_as_a_wrong_id(
    api, other_api, register, zone, other_account
):
    import uuid

    from agents_app.models import VirtualMachine
    from templates_app.models import Event

    private = register(name="globex-only", account=other_account)
    events = Event.objects.count()
    hidden = create_vm(api, private, zone)
    missing = api.post(
        "/api/v1/vms/",
        {"name": "web-1", "template": str(uuid.uuid4()), "zone": str(zone.uuid), "deploy": False},
    )
    assert (hidden.status_code, missing.status_code) == (400, 400)
    assert hidden.data["template"] == [f"unknown template id '{private.uuid}'"]
    assert str(missing.data["template"][0]).startswith("unknown template id")
    assert not VirtualMachine.objects.exists() and Event.objects.count() == events
    assert create_vm(other_api, private, zone).status_code == 201  # its owner may
