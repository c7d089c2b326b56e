"""A hostile tenant and the lineages of others: 'latest' and the listing's newest-per-lineage
rule never reach a version that is private to another account; a version made from a VM is
private to the VM's account."""

import pytest

from agents_app import services as vm_services
from versions_app.services import template_version_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def public_base_with_a_private_version(register, user):
    """acme's public base (v1), then a private v2 with acme's own changes in it."""
    base = register(name="ubuntu", is_public=True)
    private = template_version_create(base_template_id=base.pk, actor=user, is_public=False)
    return base, private


def test_latest_deploys_the_newest_version_the_caller_may_use(
    public_base_with_a_private_version, zone, other_account, other_user, account, user
):
    base, private = public_base_with_a_private_version

    theirs = vm_services.vm_create(
        name="stranger",
        template_id=base.pk,
        zone=zone,
        account=other_account,
        actor=other_user,
        stateless=True,
        use_latest_template_version=True,
    )
    ours = vm_services.vm_create(
        name="owner",
        template_id=base.pk,
        zone=zone,
        account=account,
        actor=user,
        stateless=True,
        use_latest_template_version=True,
    )

    assert theirs.template_id == base.pk, "another account's private version is not 'latest'"
    assert ours.template_id == private.pk


def test_latest_through_the_api_never_hands_out_the_private_version(
    public_base_with_a_private_version, zone, other_api
):
    base, private = public_base_with_a_private_version
    response = other_api.post(
        "/api/v1/vms/",
        {
            "name": "x",
            "template": str(private.uuid),  # naming the private version itself
            "zone": str(zone.uuid),
            "deploy": False,
            "stateless": True,
            "use_latest_template_version": True,
        },
        format="json",
    )
    assert response.status_code == 400, response.data
    assert "template" in response.data


def test_the_listing_shows_a_stranger_the_public_base_not_the_hidden_newer_version(
    public_base_with_a_private_version, api, other_api
):
    base, private = public_base_with_a_private_version

    def listed(client):
        return [row["id"] for row in client.get("/api/v1/templates/").data["results"]]

    assert listed(other_api) == [str(base.uuid)]
    assert listed(api) == [str(private.uuid)]


def test_a_version_from_a_vm_is_private_to_the_vms_account(
    register, zone, account, user, other_account
):
    from versions_app.services import template_version_for_bytes

    base = register(name="golden", is_public=True)
    base.shared_with.add(other_account)
    version, copy = template_version_for_bytes(
        base_template_id=base.pk, actor=user, zone=zone, version_name="from vm-1"
    )
    assert (version.is_public, version.is_featured) == (False, False)
    assert list(version.shared_with.all()) == []
    assert version.account_id == account.pk
    assert copy.store.zone_id == zone.pk
