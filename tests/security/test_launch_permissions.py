"""Launch permissions (CloudStack's updateTemplatePermissions): the owner shares a private
template; the shared account sees it under sharedexecutable and deploys it, but can neither
edit, delete, version nor re-share it; a third account sees nothing."""

import pytest

from templates_app.models import Template
from tests.templates_app.factories import AccountFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def third_api(db):
    from rest_framework.test import APIClient

    account = AccountFactory(name="initech")
    member = UserFactory(username="carol")
    account.members.add(member)
    client = APIClient()
    client.force_authenticate(member)
    return client


def permissions_url(template) -> str:
    return f"/api/v1/templates/{template.uuid}/permissions/"


def shared(api, template, other_account, op="add"):
    return api.post(
        permissions_url(template), {"op": op, "accounts": [str(other_account.uuid)]}, format="json"
    )


def test_a_shared_account_sees_and_deploys_but_cannot_change_it(
    register, api, other_api, other_account, third_api, zone
):
    private = register(name="secret-sauce")
    assert (
        other_api.get("/api/v1/templates/", {"templatefilter": "sharedexecutable"}).data["count"]
        == 0
    )

    response = shared(api, private, other_account)
    assert response.status_code == 200, response.data
    assert response.data["accounts"] == [str(other_account.uuid)]

    listed = other_api.get("/api/v1/templates/", {"templatefilter": "sharedexecutable"}).data
    assert [row["id"] for row in listed["results"]] == [str(private.uuid)]
    deploy = {"name": "v", "template": str(private.uuid), "zone": str(zone.uuid), "deploy": False}
    assert other_api.post("/api/v1/vms/", deploy, format="json").status_code == 201

    detail = f"/api/v1/templates/{private.uuid}/"
    assert other_api.patch(detail, {"name": "mine now"}, format="json").status_code == 404
    assert other_api.delete(detail).status_code == 404
    version = {
        "name": "fork",
        "format": "QCOW2",
        "url": "https://mirror.example/fork.qcow2",
        "zones": [str(zone.uuid)],
        "version": {"base_template": str(private.uuid)},
    }
    assert other_api.post("/api/v1/templates/", version, format="json").status_code == 400
    assert shared(other_api, private, other_account, op="reset").status_code == 404
    assert Template.objects.get(pk=private.pk).name == "secret-sauce"
    assert Template.objects.filter(base=private).count() == 0

    assert third_api.get(detail).status_code == 404
    assert third_api.post("/api/v1/vms/", deploy, format="json").status_code == 400


def test_remove_and_reset_take_the_share_back(register, api, other_api, other_account):
    private = register(name="secret-sauce")
    shared(api, private, other_account)
    assert shared(api, private, other_account, op="remove").data["accounts"] == []
    assert other_api.get(f"/api/v1/templates/{private.uuid}/").status_code == 404
    shared(api, private, other_account)
    assert api.post(permissions_url(private), {"op": "reset"}, format="json").data["accounts"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [({"op": "share"}, "op"), ({"op": "add", "accounts": []}, "accounts")],
)
def test_bad_input_names_the_field_and_changes_nothing(register, api, body, field):
    private = register(name="secret-sauce")
    response = api.post(permissions_url(private), body, format="json")
    assert response.status_code == 400
    assert field in response.data
    assert private.shared_with.count() == 0


def test_sharing_with_the_owner_itself_is_refused(register, api, account):
    private = register(name="secret-sauce")
    response = api.post(
        permissions_url(private), {"op": "add", "accounts": [str(account.uuid)]}, format="json"
    )
    assert response.status_code == 400
    assert "accounts" in response.data
