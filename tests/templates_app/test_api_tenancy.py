"""Tenant isolation (CloudStack CVE-2025-30675 leaked templates across domains), templatefilter."""

import pytest

from templates_app.models import Template

pytestmark = pytest.mark.django_db

LIST = "/api/v1/templates/"


def names(response) -> set[str]:
    assert response.status_code == 200, response.data
    return {t["name"] for t in response.data["results"]}


@pytest.fixture
def catalogue(register, other_account, other_user, admin_user, store):
    """alice (acme) owns mine; bob (globex) owns secret and shared-with-acme; public ones by bob."""
    from templates_app import services

    mine = register(name="mine")

    def bob(actor=other_user, **kw):
        return services.template_register(
            account=other_account,
            actor=actor,
            image_format="QCOW2",
            url="https://mirror.example/x.qcow2",
            zones=[store.zone],
            **kw,
        )

    secret = bob(name="secret")
    shared = bob(name="shared-with-acme")
    shared.shared_with.add(mine.account)
    bob(name="featured", is_public=True, is_featured=True, actor=admin_user)  # staff features
    bob(name="community", is_public=True)
    return {"mine": mine, "secret": secret, "shared": shared}


@pytest.mark.parametrize(
    ("template_filter", "expected"),
    [
        ("featured", {"featured"}),
        ("self", {"mine"}),
        ("selfexecutable", {"mine"}),
        ("sharedexecutable", {"shared-with-acme"}),
        ("community", {"community"}),
        ("executable", {"mine", "shared-with-acme", "featured", "community"}),
        ("all", {"mine", "shared-with-acme", "featured", "community"}),
    ],
)
def test_templatefilter_for_a_user(api, catalogue, template_filter, expected):
    assert names(api.get(LIST, {"templatefilter": template_filter})) == expected


def test_staff_all_sees_every_account(admin_api, catalogue):
    assert "secret" in names(admin_api.get(LIST, {"templatefilter": "all"}))


def test_unknown_templatefilter_is_400(api, catalogue):
    response = api.get(LIST, {"templatefilter": "everything"})
    assert response.status_code == 400
    assert "templatefilter" in response.data


def test_other_accounts_private_template_is_404_everywhere(api, catalogue, zone):
    secret = catalogue["secret"]
    url = f"{LIST}{secret.uuid}/"
    assert api.get(url).status_code == 404
    assert api.get(url + "references/").status_code == 404
    assert api.delete(url).status_code == 404
    assert api.patch(url, {"name": "pwned"}).status_code == 404
    assert Template.objects.get(pk=secret.pk).state == "ACTIVE"
    response = api.post(
        "/api/v1/vms/",
        {"name": "v", "template": str(secret.uuid), "zone": str(zone.uuid), "deploy": False},
    )
    assert response.status_code == 400
    assert "unknown template" in str(response.data["template"])


def test_shared_template_is_usable_but_not_deletable(api, catalogue, zone):
    shared = catalogue["shared"]
    response = api.post(
        "/api/v1/vms/",
        {"name": "v", "template": str(shared.uuid), "zone": str(zone.uuid), "deploy": False},
    )
    assert response.status_code == 201, response.data
    assert api.delete(f"{LIST}{shared.uuid}/").status_code == 404


def test_users_see_only_their_vms_and_events(api, other_api, catalogue, make_vm):
    vm = make_vm(catalogue["mine"])
    assert [v["id"] for v in api.get("/api/v1/vms/").data["results"]] == [str(vm.uuid)]
    assert other_api.get("/api/v1/vms/").data["results"] == []
    assert other_api.get(f"/api/v1/vms/{vm.uuid}/").status_code == 404
    other_events = other_api.get("/api/v1/events/").data["results"]
    assert str(catalogue["mine"].uuid) not in {e["object_id"] for e in other_events}


def test_accounts_and_store_writes_are_staff_only(api, admin_api, zone):
    assert api.get("/api/v1/accounts/").status_code == 403
    assert admin_api.get("/api/v1/accounts/").status_code == 200
    assert api.post("/api/v1/zones/", {"name": "z2"}).status_code == 403
    assert admin_api.post("/api/v1/zones/", {"name": "z2"}).status_code == 201
    assert api.get("/api/v1/zones/").status_code == 200


def test_anonymous_gets_401(client):
    assert client.get(LIST).status_code in (401, 403)


def test_token_auth_works(user, register):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    register()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert names(client.get(LIST)) == {"debian-12"}
