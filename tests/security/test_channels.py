"""Channels across tenants: only the lineage's account (or staff) sees or moves its channels; a
hostile account gets 404 and nothing changes; a follower never reaches a version its account
may not use."""

import pytest

from agents_app import services as vm_services
from templates_app.models import Event
from tests.versions_app import channel_fixtures
from tests.versions_app.channel_fixtures import deploy_follower
from versions_app.channels import channel_promote
from versions_app.models import Channel

pytestmark = pytest.mark.django_db

# The fixtures of channel tests (a lineage with patterned versions on the test driver).
cloud = channel_fixtures.cloud
image_server = channel_fixtures.image_server
libvirt_backend = channel_fixtures.libvirt_backend
lineage = channel_fixtures.lineage


def channels_url(template, name: str = "") -> str:
    url = f"/api/v1/templates/{template.uuid}/channels/"
    return f"{url}{name}/" if name else url


@pytest.mark.parametrize("public", [False, True])
def test_a_hostile_account_gets_404_and_changes_nothing(api, other_api, lineage, user, public):
    base, add_version = lineage
    v2 = add_version(0x6B)
    base.is_public = v2.is_public = public
    base.save(update_fields=["is_public"])
    v2.save(update_fields=["is_public"])
    channel_promote(template_id=base.pk, name="stable", version_id=base.pk, actor=user)
    events_before = Event.objects.count()

    for template in (base, v2):
        assert other_api.get(channels_url(template)).status_code == 404
        assert other_api.get(channels_url(template, "stable")).status_code == 404
        assert (
            other_api.post(channels_url(template), {"name": "evil"}, format="json").status_code
            == 404
        )
        promote = other_api.post(
            channels_url(template, "stable") + "promote/", {"version": str(v2.uuid)}, format="json"
        )
        assert promote.status_code == 404
        assert other_api.post(channels_url(template, "stable") + "rollback/").status_code == 404

    stable = Channel.objects.get(lineage=base, name="stable")
    assert stable.version_id == base.pk and stable.previous_version_id is None
    assert not Channel.objects.filter(name="evil").exists()
    assert Event.objects.count() == events_before
    assert api.get(channels_url(base)).status_code == 200, "the owner still does"


def test_staff_may_promote_any_lineage(admin_api, lineage):
    base, _ = lineage
    response = admin_api.post(
        channels_url(base, "canary") + "promote/", {"version": str(base.uuid)}, format="json"
    )
    assert response.status_code == 200, response.data
    assert Channel.objects.get(lineage=base, name="canary").version_id == base.pk


def test_a_follower_never_reaches_a_version_private_to_the_owner(
    lineage, zone, user, other_account, other_user
):
    """A public lineage whose canary points at a private version: another account's follower
    of canary gets a 409, not the owner's private bytes."""
    base, add_version = lineage
    base.is_public = True
    base.save(update_fields=["is_public"])
    private = add_version(0x6B)
    private.is_public = False
    private.save(update_fields=["is_public"])
    channel_promote(template_id=base.pk, name="canary", version_id=private.pk, actor=user)

    with pytest.raises(vm_services.NothingToFollow):
        deploy_follower(base, zone, other_account, other_user, "canary")
    latest = deploy_follower(base, zone, other_account, other_user, "latest")
    assert latest.template_id == base.pk, "'latest' too skips the private version"


def test_followers_of_other_accounts_are_listed_to_staff_only(
    api, admin_api, lineage, zone, account, user, other_account, other_user
):
    base, _ = lineage
    base.is_public = True
    base.save(update_fields=["is_public"])
    channel_promote(template_id=base.pk, name="canary", version_id=base.pk, actor=user)
    deploy_follower(base, zone, account, user, "canary", name="mine")
    deploy_follower(base, zone, other_account, other_user, "canary", name="theirs")

    owner_sees = api.get(channels_url(base, "canary")).data["followers"]
    assert [f["name"] for f in owner_sees] == ["mine"]
    staff_sees = admin_api.get(channels_url(base, "canary")).data["followers"]
    assert sorted(f["name"] for f in staff_sees) == ["mine", "theirs"]


def test_a_promote_cannot_name_another_accounts_version(
    other_api, lineage, register, other_account, other_user
):
    """The hostile account's own lineage, promoted to the victim's version: 400 on the
    version, as for a wrong id (no hint that it exists)."""
    victim_base, _ = lineage
    own = register(name="hostile", account=other_account, actor=other_user)
    response = other_api.post(
        channels_url(own, "stable") + "promote/",
        {"version": str(victim_base.uuid)},
        format="json",
    )
    assert response.status_code == 400
    assert "no version with id" in str(response.data["version"])
    assert not Channel.objects.filter(version=victim_base).exists()


def test_channel_moves_are_events_of_the_owner_only(api, other_api, lineage, user):
    base, _ = lineage
    channel_promote(template_id=base.pk, name="canary", version_id=base.pk, actor=user)

    def channel_events(client) -> list[dict]:
        rows = client.get("/api/v1/events/", {"page_size": 200}).data
        rows = rows["results"] if isinstance(rows, dict) else rows
        return [row for row in rows if row["object_type"] == "channel"]

    (move,) = channel_events(api)
    assert (move["from_state"], move["to_state"], move["actor"]) == ("", "1", "alice")
    assert channel_events(other_api) == []
