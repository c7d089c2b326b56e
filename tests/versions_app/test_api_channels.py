"""The channels API: list, create, detail with history and followers, promote, rollback, and
VMs/VM pools created with `"follow": {"channel": ...}`."""

import pytest

from agents_app.agent import vms
from agents_app.models import VirtualMachine
from versions_app.models import Channel

from . import channel_fixtures

pytestmark = pytest.mark.django_db

# The fixtures of channel tests (a lineage with patterned versions on the test driver).
cloud = channel_fixtures.cloud
image_server = channel_fixtures.image_server
libvirt_backend = channel_fixtures.libvirt_backend
lineage = channel_fixtures.lineage

V2_PATTERN = 0x6B


def channels_url(template, name: str = "") -> str:
    url = f"/api/v1/templates/{template.uuid}/channels/"
    return f"{url}{name}/" if name else url


def test_a_lineage_lists_latest_stable_and_canary_from_the_start(api, lineage):
    base, _ = lineage
    response = api.get(channels_url(base))
    assert response.status_code == 200, response.data
    assert [(c["name"], c["built_in"], c["computed"]) for c in response.data] == [
        ("latest", True, True),
        ("stable", True, False),
        ("canary", True, False),
    ]
    latest, stable, canary = response.data
    assert latest["version"]["id"] == str(base.uuid)
    assert stable["version"] is None and canary["version"] is None


def test_the_list_costs_the_same_queries_for_1_and_many_channels(
    api, lineage, user, django_assert_max_num_queries
):
    from versions_app.channels import channel_create

    base, _ = lineage
    api.get(channels_url(base))  # warm the content-type cache
    with django_assert_max_num_queries(12) as few:
        api.get(channels_url(base))
    for n in range(8):
        channel_create(template_id=base.pk, name=f"ring-{n}", actor=user)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = api.get(channels_url(base))
    assert len(response.data) == 11


def test_promote_rollback_and_history_through_the_api(api, lineage, user):
    base, add_version = lineage
    v2 = add_version(V2_PATTERN)

    first = api.post(
        channels_url(base, "stable") + "promote/", {"version": str(base.uuid)}, format="json"
    )
    assert first.status_code == 200, first.data
    second = api.post(
        channels_url(base, "stable") + "promote/", {"version": str(v2.uuid)}, format="json"
    )
    assert second.data["version"]["version_number"] == 2
    assert second.data["previous_version"]["version_number"] == 1

    back = api.post(channels_url(base, "stable") + "rollback/")
    assert back.status_code == 200, back.data
    assert back.data["version"]["id"] == str(base.uuid)
    history = api.get(channels_url(base, "stable")).data["history"]
    assert [(h["actor"], h["from_version"], h["to_version"]) for h in history] == [
        ("alice", "2", "1"),
        ("alice", "1", "2"),
        ("alice", "", "1"),
    ]
    assert history[0]["reason"].startswith("rollback")


def test_api_errors_name_the_field_or_what_is_missing(api, lineage, register):
    base, add_version = lineage
    url = channels_url(base, "canary") + "promote/"

    missing = api.post(url, {}, format="json")
    assert missing.status_code == 400 and "version" in missing.data
    stranger = register(name="elsewhere")
    foreign = api.post(url, {"version": str(stranger.uuid)}, format="json")
    assert foreign.status_code == 400 and "version" in foreign.data

    nothing_before = api.post(channels_url(base, "canary") + "rollback/")
    assert nothing_before.status_code == 409, nothing_before.data
    assert "no previous version" in nothing_before.data["detail"]

    unknown = api.post(channels_url(base, "nope") + "promote/", {"version": str(base.uuid)})
    assert unknown.status_code == 400 and "name" in unknown.data
    assert api.get(channels_url(base, "nope")).status_code == 404
    latest = api.post(channels_url(base, "latest") + "promote/", {"version": str(base.uuid)})
    assert latest.status_code == 400 and "name" in latest.data
    assert not Channel.objects.filter(version__isnull=False).exists(), "nothing changed"


def test_create_a_custom_channel(api, lineage):
    base, _ = lineage
    made = api.post(channels_url(base), {"name": "beta"}, format="json")
    assert made.status_code == 201, made.data
    assert made.data["name"] == "beta" and made.data["version"] is None
    assert made.data["history"][0]["reason"] == "created"

    for bad in ("Beta", "9lives", "x" * 33):
        refused = api.post(channels_url(base), {"name": bad}, format="json")
        assert refused.status_code == 400, refused.data
        assert "name" in refused.data and "lowercase letter" in str(refused.data)
    assert api.post(channels_url(base), {"name": "beta"}, format="json").status_code == 400
    assert Channel.objects.filter(lineage=base).count() == 1


def test_vms_follow_a_channel_through_the_api(api, lineage, zone):
    base, _ = lineage
    api.post(channels_url(base, "canary") + "promote/", {"version": str(base.uuid)}, format="json")
    body = {"name": "c", "template": str(base.uuid), "zone": str(zone.uuid)}

    stateful = api.post("/api/v1/vms/", {**body, "follow": {"channel": "canary"}}, format="json")
    assert stateful.status_code == 400 and "follow.channel" in stateful.data
    unknown = api.post(
        "/api/v1/vms/", {**body, "stateless": True, "follow": {"channel": "beta"}}, format="json"
    )
    assert unknown.status_code == 400 and "follow.channel" in unknown.data
    both = api.post(
        "/api/v1/vms/",
        {
            **body,
            "stateless": True,
            "use_latest_template_version": True,
            "follow": {"channel": "canary"},
        },
        format="json",
    )
    assert both.status_code == 400, both.data
    assert not VirtualMachine.objects.exists()

    made = api.post(
        "/api/v1/vms/", {**body, "stateless": True, "follow": {"channel": "canary"}}, format="json"
    )
    assert made.status_code == 201, made.data
    assert made.data["follow"] == {"channel": "canary"}
    assert made.data["use_latest_template_version"] is False
    vm = VirtualMachine.objects.get(uuid=made.data["id"])
    assert vms.vm_deploy_on_host(vm_id=vm.pk).state == "RUNNING"

    latest = api.post(
        "/api/v1/vms/",
        {**body, "name": "l", "stateless": True, "use_latest_template_version": True},
        format="json",
    )
    assert latest.data["follow"] == {"channel": "latest"}
    assert latest.data["use_latest_template_version"] is True

    followers = api.get(channels_url(base, "canary")).data["followers"]
    assert [(f["kind"], f["name"], f["zone"]) for f in followers] == [("vm", "c", "zone-a")]


def test_a_vm_pool_follows_a_channel_through_the_api(api, lineage, zone):
    base, _ = lineage
    api.post(channels_url(base, "stable") + "promote/", {"version": str(base.uuid)}, format="json")
    made = api.post(
        "/api/v1/vm-pools/",
        {
            "name": "lab",
            "template": str(base.uuid),
            "zone": str(zone.uuid),
            "size": 1,
            "follow": {"channel": "stable"},
        },
        format="json",
    )
    assert made.status_code == 201, made.data
    assert made.data["follow"] == {"channel": "stable"}
    assert made.data["use_latest_template_version"] is False
    vm = VirtualMachine.objects.get(uuid=made.data["vms"][0])
    assert vm.follow_channel == "stable" and vm.stateless
