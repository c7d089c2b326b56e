"""A template's secrets stay with its owner: another account that can see a public template gets
its URL without the signed query string or credentials, and its HTTP headers without values."""

import pytest

pytestmark = pytest.mark.django_db

SIGNED = "https://mirror.example/golden.qcow2?X-Amz-Signature=s3cr3t&Expires=9"


@pytest.fixture
def public_with_secrets(register):
    return register(
        name="golden",
        url=SIGNED,
        is_public=True,
        details=[
            {"key": "HTTP_HEADER", "value": "Authorization:Bearer tok-123"},
            {"key": "HTTP_HEADER:X-Api-Key", "value": "key-456"},
        ],
    )


def shown(client, template, *, listing: bool):
    if listing:
        rows = client.get("/api/v1/templates/").data["results"]
        return next(row for row in rows if row["id"] == str(template.uuid))
    return client.get(f"/api/v1/templates/{template.uuid}/").data


@pytest.mark.parametrize("listing", [True, False], ids=["list", "detail"])
def test_another_account_sees_no_query_string_credentials_or_header_values(
    public_with_secrets, other_api, listing
):
    row = shown(other_api, public_with_secrets, listing=listing)
    assert row["url"] == "https://mirror.example/golden.qcow2"
    assert {(d["key"], d["value"]) for d in row["details"]} == {
        ("HTTP_HEADER", "Authorization:(hidden)"),
        ("HTTP_HEADER:X-Api-Key", "(hidden)"),
    }
    text = str(row)
    for secret in ("s3cr3t", "tok-123", "key-456"):
        assert secret not in text


@pytest.mark.parametrize("listing", [True, False], ids=["list", "detail"])
def test_the_owner_and_staff_see_everything(public_with_secrets, api, admin_api, listing):
    for client in (api, admin_api):
        row = shown(client, public_with_secrets, listing=listing)
        assert row["url"] == SIGNED
        assert {"key": "HTTP_HEADER", "value": "Authorization:Bearer tok-123"} in row["details"]


def test_a_non_latin1_header_value_is_a_400_at_registration_not_a_task_crash(api, zone, store):
    response = api.post(
        "/api/v1/templates/",
        {
            "name": "bad-header",
            "format": "QCOW2",
            "url": "https://mirror.example/x.qcow2",
            "zones": [str(zone.uuid)],
            "details": [{"key": "HTTP_HEADER", "value": "X-Token:caf\u00e9"}],
        },
        format="json",
    )
    assert response.status_code == 400
    assert "visible ASCII" in str(response.data["details"])
    from templates_app.models import Template

    assert not Template.objects.filter(name="bad-header").exists()
