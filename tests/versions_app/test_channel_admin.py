"""The channels page of the admin (Promote / Rollback confirmed on a page listing the followers
that will be rebuilt) and `manage.py promote_version`: the same service as the API."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from versions_app.models import Channel

from . import channel_fixtures
from .channel_fixtures import deploy_follower, stop

pytestmark = pytest.mark.django_db

# The fixtures of channel tests (a lineage with patterned versions on the test driver).
cloud = channel_fixtures.cloud
image_server = channel_fixtures.image_server
libvirt_backend = channel_fixtures.libvirt_backend
lineage = channel_fixtures.lineage


def channel_of(base, name: str) -> Channel:
    return Channel.objects.get(lineage=base, name=name)


def test_admin_promote_and_rollback_confirm_with_the_followers(
    client, admin_user, lineage, zone, account, user
):
    base, add_version = lineage
    client.force_login(admin_user)
    change = client.get(reverse("admin:templates_app_template_change", args=[base.pk]))
    channels_url = reverse("admin:templates_app_template_channels", args=[base.pk])
    assert channels_url in change.content.decode()

    page = client.get(channels_url).content.decode()
    for name in ("latest", "stable", "canary"):
        assert f"channel-{name}" in page
    promote_url = reverse("admin:templates_app_template_channel_promote", args=[base.pk, "canary"])

    picked = client.post(promote_url, {"version": base.pk})
    assert picked.status_code == 200 and "Yes, promote" in picked.content.decode()
    assert not Channel.objects.filter(version__isnull=False).exists(), "not before the confirm"
    done = client.post(promote_url, {"version": base.pk, "confirm": "yes"})
    assert done.status_code == 302 and done.url == channels_url
    assert channel_of(base, "canary").version_id == base.pk

    stop(deploy_follower(base, zone, account, user, "canary", name="canary-vm"), user)
    v2 = add_version(0x6B)
    confirm = client.post(promote_url, {"version": v2.pk}).content.decode()
    assert "canary-vm" in confirm and "at once (stopped)" in confirm
    client.post(promote_url, {"version": v2.pk, "confirm": "yes"})
    assert channel_of(base, "canary").version_id == v2.pk

    rollback_url = reverse(
        "admin:templates_app_template_channel_rollback", args=[base.pk, "canary"]
    )
    confirm = client.get(rollback_url).content.decode()
    assert "canary-vm" in confirm and "Yes, rollback" in confirm
    client.post(rollback_url, {"confirm": "yes"})
    channel = channel_of(base, "canary")
    assert (channel.version_id, channel.previous_version_id) == (base.pk, v2.pk)


def test_admin_shows_a_refused_promote_as_an_error(client, admin_user, lineage, user):
    from templates_app import services as template_services

    base, add_version = lineage
    v2 = add_version(0x6B)
    template_services.template_deactivate(template_id=v2.pk, actor=user)
    client.force_login(admin_user)
    url = reverse("admin:templates_app_template_channel_promote", args=[base.pk, "stable"])
    response = client.post(url, {"version": v2.pk, "confirm": "yes"}, follow=True)
    assert response.status_code == 200
    assert not Channel.objects.filter(version__isnull=False).exists()


def test_admin_channel_pages_need_staff(client, user, lineage):
    base, _ = lineage
    client.force_login(user)
    url = reverse("admin:templates_app_template_channels", args=[base.pk])
    assert client.get(url).status_code == 302  # to the admin's login


def test_promote_version_command_and_rollback(lineage, zone, account, user):
    base, add_version = lineage
    v2 = add_version(0x6B)
    out = StringIO()
    call_command("promote_version", str(base.uuid), "stable", "--to", "1", stdout=out)
    deploy_follower(base, zone, account, user, "stable", name="web")
    call_command("promote_version", str(v2.uuid), "stable", "--to", "2", stdout=out)
    assert channel_of(base, "stable").version_id == v2.pk
    assert "web (zone-a): rebuilt when it next stops" in out.getvalue()

    call_command("promote_version", str(base.uuid), "stable", "--rollback", stdout=out)
    assert channel_of(base, "stable").version_id == base.pk

    with pytest.raises(CommandError, match="no version 9"):
        call_command("promote_version", str(base.uuid), "stable", "--to", "9")
    with pytest.raises(CommandError, match="name: "):
        call_command("promote_version", str(base.uuid), "Bad", "--to", "1")
    assert channel_of(base, "stable").version_id == base.pk


def test_admin_vm_pool_follows_a_channel_and_refuses_a_bad_one(
    client, admin_user, lineage, zone, account, user
):
    from agents_app.models import VmPool
    from versions_app.channels import channel_promote

    base, _ = lineage
    channel_promote(template_id=base.pk, name="canary", version_id=base.pk, actor=user)
    client.force_login(admin_user)
    form = {
        "name": "lab",
        "account": account.pk,
        "zone": zone.pk,
        "template": base.pk,
        "size": 1,
        "vms-TOTAL_FORMS": 0,
        "vms-INITIAL_FORMS": 0,
    }
    add_url = reverse("admin:agents_app_vmpool_add")
    for bad, rule in (("Canary", "lowercase letter"), ("beta", "has no channel")):
        refused = client.post(add_url, {**form, "follow_channel": bad})
        assert refused.status_code == 200 and rule in refused.content.decode()
    assert not VmPool.objects.exists()

    made = client.post(add_url, {**form, "follow_channel": "canary"})
    assert made.status_code == 302, made.content[:2000]
    (vm,) = VmPool.objects.get(name="lab").vms.all()
    assert vm.follow_channel == "canary" and vm.stateless


def test_admin_channel_page_shows_its_moves(client, admin_user, lineage, user):
    from versions_app.channels import channel_promote

    base, _ = lineage
    channel = channel_promote(template_id=base.pk, name="stable", version_id=base.pk, actor=user)
    client.force_login(admin_user)
    page = client.get(reverse("admin:versions_app_channel_change", args=[channel.pk]))
    assert page.status_code == 200
    assert "promote: version none -&gt; 1 by alice" in page.content.decode()
