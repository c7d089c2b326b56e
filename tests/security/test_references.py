"""references/ of a public template, asked by another account: counts per kind, and only the
caller's own VMs; staff see every holder."""

import pytest

from agents_app import services as vm_services

pytestmark = pytest.mark.django_db


def test_a_stranger_sees_counts_and_only_its_own_vms(
    register, zone, account, user, other_account, other_user, api, other_api, admin_api
):
    template = register(name="shared-base", is_public=True)
    vm_services.vm_create(
        name="acme-secret-db", template_id=template.pk, zone=zone, account=account, actor=user
    )
    vm_services.vm_create(
        name="globex-web",
        template_id=template.pk,
        zone=zone,
        account=other_account,
        actor=other_user,
    )
    url = f"/api/v1/templates/{template.uuid}/references/"

    stranger = other_api.get(url)
    assert stranger.status_code == 200
    assert stranger.data["counts"]["vm"] == 2
    assert [row["name"] for row in stranger.data["references"]] == ["globex-web"]
    assert "acme-secret-db" not in stranger.content.decode()

    owner = api.get(url).data
    assert [row["name"] for row in owner["references"]] == ["acme-secret-db"]
    assert sorted(row["name"] for row in admin_api.get(url).data["references"]) == [
        "acme-secret-db",
        "globex-web",
    ]
