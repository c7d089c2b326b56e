"""The CloudStack facade's transport: keys, signatures (versions 2 and 3, GET and POST, driven
by the real `cs` client against a live server), the envelope and CloudStack's error shape."""

import pytest
from cs import CloudStackApiException
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from templates_app.cloudstack.models import ApiKey, AsyncJob
from templates_app.models import Template
from tests.cloudstack import call, cs_client, expires_in, keys_for, signed

from .factories import ZoneFactory

pytestmark = pytest.mark.django_db


def test_create_api_keys_prints_a_pair_keeps_the_secret_encrypted_and_regenerates(user, capsys):
    call_command("create_api_keys", "alice")
    printed = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    row = ApiKey.objects.get(user=user)
    assert row.api_key == printed["apikey"]
    assert printed["secretkey"] not in row.secret_encrypted, "stored encrypted"
    assert call(_pair(printed), "listZones")[0] == 200

    with pytest.raises(CommandError, match="already has API keys"):
        call_command("create_api_keys", "alice")
    call_command("create_api_keys", "alice", "--regenerate")
    again = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    assert again["apikey"] != printed["apikey"]
    assert call(_pair(printed), "listZones")[0] == 401, "the old pair stops working"
    assert call(_pair(again), "listZones")[0] == 200
    with pytest.raises(CommandError, match="username: no user named 'nobody'"):
        call_command("create_api_keys", "nobody")


def _pair(printed):
    from templates_app.cloudstack.keys import KeyPair

    return KeyPair(printed["apikey"], printed["secretkey"])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "version"), [("get", 3), ("post", 3), ("get", 2), ("post", 2)])
def test_the_cs_client_lists_zones_as_the_rest_api_does(live_server, user, method, version):
    ZoneFactory(name="zone a", description="first zone")
    ZoneFactory(name="zone-b")
    client = cs_client(live_server.url, keys_for(user), method=method, version=version)

    answer = client.listZones()
    # a value with a space is signed as %20 (re-encoded after form-decoding)
    by_keyword = client.listZones(keyword="zone a")

    api = APIClient()
    api.force_authenticate(user)
    rest = {z["id"]: z for z in api.get("/api/v1/zones/").json()["results"]}
    assert answer["count"] == 2
    assert {z["id"]: (z["name"], z["description"]) for z in answer["zone"]} == {
        zone_id: (z["name"], z["description"]) for zone_id, z in rest.items()
    }
    assert [z["name"] for z in by_keyword["zone"]] == ["zone a"]


@pytest.mark.django_db(transaction=True)
def test_the_cs_client_sees_cloudstacks_error_shape(live_server, user):
    client = cs_client(live_server.url, keys_for(user))

    with pytest.raises(CloudStackApiException) as unknown:
        client.listDragons()
    with pytest.raises(CloudStackApiException) as missing:
        client.queryAsyncJobResult()

    assert unknown.value.response.status_code == 432
    assert unknown.value.response.json()["listdragonsresponse"]["errorcode"] == 432
    assert unknown.value.error["errorcode"] == 432, "cs unwraps the envelope"
    assert missing.value.response.status_code == 431
    error = missing.value.error
    assert error["errortext"] == (
        "Unable to execute API command queryasyncjobresult due to missing parameter jobid"
    )
    assert error["cserrorcode"] == 9999


def test_a_wrong_signature_is_a_401_and_changes_nothing(user, register):
    pair = keys_for(user)
    template = register()
    forged = signed(pair, "deleteTemplate", secret="not-the-secret", id=str(template.uuid))

    response = APIClient().get("/client/api", forged)

    assert response.status_code == 401
    assert response.json() == {
        "deletetemplateresponse": {
            "uuidList": [],
            "errorcode": 401,
            "cserrorcode": 9999,
            "errortext": "unable to verify user credentials and/or request signature",
        }
    }
    assert Template.objects.get(pk=template.pk).state == "ACTIVE"
    assert AsyncJob.objects.count() == 0


def test_a_tampered_parameter_breaks_the_signature(user, register):
    pair = keys_for(user)
    template = register()
    data = signed(pair, "deleteTemplate", id="00000000-0000-0000-0000-000000000000")
    data["id"] = str(template.uuid)

    assert APIClient().get("/client/api", data).status_code == 401
    assert Template.objects.get(pk=template.pk).state == "ACTIVE"


@pytest.mark.parametrize("version_key", ["signatureVersion", "signatureversion"])
def test_signature_version_3_honours_expires(user, version_key):
    pair = keys_for(user)

    past = call(pair, "listZones", **{version_key: "3", "expires": expires_in(-5)})
    future = call(pair, "listZones", **{version_key: "3", "expires": expires_in(60)})
    no_expiry = call(pair, "listZones", **{version_key: "3"})
    garbled = call(pair, "listZones", **{version_key: "3", "expires": "tomorrow"})

    assert past[0] == 401 and past[1]["errorcode"] == 401
    assert future[0] == 200
    assert no_expiry[0] == 401
    assert garbled[0] == 401


def test_unknown_api_key_and_missing_signature_are_401(user):
    pair = keys_for(user)
    from templates_app.cloudstack.keys import KeyPair

    status, body = call(KeyPair("no-such-key", pair.secret_key), "listZones")
    assert (status, body["errorcode"]) == (401, 401)
    response = APIClient().get("/client/api", {"command": "listZones", "apiKey": pair.api_key})
    assert response.status_code == 401


def test_an_inactive_user_cannot_call(user):
    pair = keys_for(user)
    user.is_active = False
    user.save()
    assert call(pair, "listZones")[0] == 401


def test_unknown_command_is_432_and_malformed_parameters_are_431(user):
    pair = keys_for(user)

    unknown = call(pair, "launchRocket")
    malformed = call(pair, "queryAsyncJobResult", jobid="not-a-uuid")
    bad_page = call(pair, "listZones", page="x")

    assert unknown[0] == 432
    assert unknown[1]["errortext"].startswith("The given command launchRocket does not exist")
    assert malformed[0] == 431
    assert "Invalid parameter jobid value=not-a-uuid" in malformed[1]["errortext"]
    assert bad_page[0] == 431 and "Invalid parameter page value=x" in bad_page[1]["errortext"]


def test_list_apis_describes_every_command_with_its_parameters(user):
    status, body = call(keys_for(user), "listApis")

    apis = {api["name"]: api for api in body["api"]}
    assert status == 200 and body["count"] == len(apis)
    assert {"listZones", "listTemplates", "registerTemplate", "queryAsyncJobResult"} <= set(apis)
    assert apis["deleteTemplate"]["isasync"] is True
    params = {p["name"]: p for p in apis["listTemplates"]["params"]}
    assert params["templatefilter"]["required"] is True
    assert params["id"]["type"] == "uuid"
    one = call(keys_for(user), "listApis", name="listZones")[1]
    assert [api["name"] for api in one["api"]] == ["listZones"]


def test_os_types_and_hypervisors(user):
    pair = keys_for(user)
    os_types = call(pair, "listOsTypes")[1]
    debian = call(pair, "listOsTypes", keyword="debian")[1]
    hypervisors = call(pair, "listHypervisors")[1]

    assert os_types["count"] == len(os_types["ostype"]) > 5
    assert {row["description"] for row in debian["ostype"]} == {
        "Debian GNU/Linux 12 (64-bit)",
        "Debian GNU/Linux 11 (64-bit)",
    }
    assert hypervisors == {"count": 1, "hypervisor": [{"name": "KVM"}]}


def test_list_zones_costs_a_constant_number_of_queries(user, django_assert_max_num_queries):
    pair = keys_for(user)
    for n in range(30):
        ZoneFactory(name=f"z{n}")
    with django_assert_max_num_queries(4):
        status, body = call(pair, "listZones", pagesize="10", page="2")
    assert status == 200 and body["count"] == 30 and len(body["zone"]) == 10


def test_the_admin_lists_keys_without_secrets_and_regenerate_shows_the_new_one_once(
    client, admin_user, user
):
    old = keys_for(user)
    client.force_login(admin_user)
    row = ApiKey.objects.get(user=user)

    listing = client.get("/admin/templates_app/apikey/")
    change = client.get(f"/admin/templates_app/apikey/{row.pk}/change/")
    done = client.post(
        "/admin/templates_app/apikey/",
        {"action": "regenerate", "_selected_action": [row.pk]},
        follow=True,
    )

    assert listing.status_code == change.status_code == 200
    assert old.api_key in listing.content.decode()
    assert old.secret_key not in listing.content.decode() + change.content.decode()
    assert row.secret_encrypted not in change.content.decode()
    new = ApiKey.objects.get(user=user)
    messages = [str(m) for m in done.context["messages"]]
    assert new.api_key != old.api_key
    assert any(new.api_key in m and "secretkey " in m for m in messages)
    secret = next(m for m in messages if new.api_key in m).split("secretkey ")[1].split(" ")[0]
    from templates_app.cloudstack.keys import KeyPair

    assert call(KeyPair(new.api_key, secret), "listZones")[0] == 200
    assert call(old, "listZones")[0] == 401
    assert client.get("/admin/templates_app/apikey/").content.decode().count(secret) == 0


def test_a_staff_user_who_is_not_superuser_cannot_regenerate_anothers_key(client, user):
    from django.contrib.auth.models import Permission

    from .factories import UserFactory

    old = keys_for(user)
    staff = UserFactory(username="operator", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__endswith="apikey"))
    client.force_login(staff)
    row = ApiKey.objects.get(user=user)

    done = client.post(
        "/admin/templates_app/apikey/",
        {"action": "regenerate", "_selected_action": [row.pk]},
        follow=True,
    )

    messages = [str(m) for m in done.context["messages"]]
    assert any("only a superuser or the key's owner" in m for m in messages)
    assert ApiKey.objects.get(user=user).api_key == old.api_key
    assert call(old, "listZones")[0] == 200


@pytest.mark.parametrize("who", ["tenant", "staff"])
def test_every_listed_command_answers_bad_input_in_cloudstacks_shape_and_writes_nothing(
    who, user, admin_user, register, zone
):
    """What a cloudmonkey-style client syncs from listApis, called with nothing and with
    garbage in every parameter: a 200 or a 431 in CloudStack's shape, never a 5xx."""
    from templates_app.models import Event

    pair = keys_for(user if who == "tenant" else admin_user)
    register()
    events = Event.objects.count()
    apis = call(pair, "listApis")[1]["api"]

    for api in apis:
        garbage = {p["name"]: "garbage" for p in api["params"] if p["type"] != "map"}
        for params in ({}, garbage):
            status, body = call(pair, api["name"], **params)
            assert status in (200, 431), (api["name"], params, body)
            if status == 431:
                assert body["errorcode"] == 431 and body["errortext"], body
    assert Template.objects.count() == 1
    assert Event.objects.count() == events
    assert not AsyncJob.objects.exists()
