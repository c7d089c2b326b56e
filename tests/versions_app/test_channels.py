"""Channels of a lineage (issue 15): promote, rollback, followers rebuilt onto the channel's
version with the bytes checked by qemu-io; deploys on the libvirt test driver, the host's side
called directly as its worker would."""

import pytest
from django.contrib.contenttypes.models import ContentType

from agents_app import services as vm_services
from agents_app import vm_pools
from agents_app.agent import vms
from agents_app.followers import rebuild_channel_followers
from agents_app.models import VirtualMachine
from templates_app import services as template_services
from templates_app.errors import InvalidInput, TemplateNotUsable
from templates_app.models import Event
from templates_app.references import reference_summary
from versions_app.channel_followers import channel_followers
from versions_app.channels import ChannelConflict, channel_create, channel_promote, channel_rollback
from versions_app.models import Channel

from . import channel_fixtures
from .channel_fixtures import BASE_PATTERN, deploy_follower, reads_pattern, stop

pytestmark = pytest.mark.django_db

# The fixtures of channel tests (a lineage with patterned versions on the test driver).
cloud = channel_fixtures.cloud
image_server = channel_fixtures.image_server
libvirt_backend = channel_fixtures.libvirt_backend
lineage = channel_fixtures.lineage

V2_PATTERN = 0x6B


def promote(base, name, version, user):
    return channel_promote(template_id=base.pk, name=name, version_id=version.pk, actor=user)


def moves_of(channel: Channel) -> list[tuple[str, str, str]]:
    events = Event.objects.filter(
        content_type=ContentType.objects.get_for_model(Channel), object_id=channel.pk
    ).order_by("id")
    return [(e.actor_label, e.from_state, e.to_state) for e in events]


def test_promote_canary_rebuilds_only_the_canary_followers(lineage, zone, account, user):
    base, add_version = lineage
    promote(base, "stable", base, user)
    promote(base, "canary", base, user)
    on_canary = stop(deploy_follower(base, zone, account, user, "canary", name="c"), user)
    on_stable = stop(deploy_follower(base, zone, account, user, "stable", name="s"), user)
    pinned = stop(deploy_follower(base, zone, account, user, "", name="p"), user)
    v2 = add_version(V2_PATTERN)

    promote(base, "canary", v2, user)

    assert rebuild_channel_followers(base_template_id=base.pk, channel="stable") == 0
    assert rebuild_channel_followers(base_template_id=base.pk, channel="canary") == 1
    rebuilt = vms.vm_rebuild_on_host(vm_id=on_canary.pk)
    assert rebuilt.error_text == "" and rebuilt.state == "STOPPED"
    assert rebuilt.template_id == v2.pk
    assert reads_pattern(rebuilt.root_disk_path, V2_PATTERN)
    for untouched in (on_stable, pinned):
        untouched.refresh_from_db()
        assert untouched.template_id == base.pk
        assert reads_pattern(untouched.root_disk_path, BASE_PATTERN)


def test_promote_stable_then_rollback_restores_the_previous_disk(lineage, zone, account, user):
    base, add_version = lineage
    promote(base, "stable", base, user)
    vm = stop(deploy_follower(base, zone, account, user, "stable"), user)
    assert reads_pattern(vm.root_disk_path, BASE_PATTERN)
    v2 = add_version(V2_PATTERN)

    channel = promote(base, "stable", v2, user)
    assert (channel.version_id, channel.previous_version_id) == (v2.pk, base.pk)
    assert rebuild_channel_followers(base_template_id=base.pk, channel="stable") == 1
    vm = vms.vm_rebuild_on_host(vm_id=vm.pk)
    assert vm.template_id == v2.pk
    assert reads_pattern(vm.root_disk_path, V2_PATTERN)
    assert not reads_pattern(vm.root_disk_path, BASE_PATTERN)

    channel = channel_rollback(template_id=base.pk, name="stable", actor=user)
    assert (channel.version_id, channel.previous_version_id) == (base.pk, v2.pk)
    assert rebuild_channel_followers(base_template_id=base.pk, channel="stable") == 1
    vm = vms.vm_rebuild_on_host(vm_id=vm.pk)
    assert vm.error_text == "" and vm.template_id == base.pk
    assert reads_pattern(vm.root_disk_path, BASE_PATTERN), "the previous bytes are back"
    assert moves_of(channel) == [("alice", "", "1"), ("alice", "1", "2"), ("alice", "2", "1")]


def test_a_running_follower_moves_when_it_next_stops(lineage, zone, account, user):
    base, add_version = lineage
    promote(base, "canary", base, user)
    vm = deploy_follower(base, zone, account, user, "canary")
    v2 = add_version(V2_PATTERN)
    promote(base, "canary", v2, user)

    assert rebuild_channel_followers(base_template_id=base.pk, channel="canary") == 0
    vm.refresh_from_db()
    assert vm.state == "RUNNING" and vm.template_id == base.pk

    vm = stop(vm, user)
    assert vm.error_text == "" and vm.template_id == v2.pk
    assert reads_pattern(vm.root_disk_path, V2_PATTERN)


def test_a_channel_pointing_at_nothing_cannot_be_followed(lineage, zone, account, user):
    base, _ = lineage
    with pytest.raises(vm_services.NothingToFollow) as refused:
        deploy_follower(base, zone, account, user, "canary")
    assert refused.value.status_code == 409
    assert not VirtualMachine.objects.exists()


@pytest.mark.parametrize(
    ("channel", "stateless", "message"),
    [
        ("Canary", True, "lowercase letter"),
        ("beta", True, "no channel 'beta'"),
        ("canary", False, "only a stateless VM"),
    ],
)
def test_bad_follow_input_is_a_400_naming_the_field(
    lineage, zone, account, user, channel, stateless, message
):
    base, _ = lineage
    with pytest.raises(InvalidInput) as refused:
        vm_services.vm_deploy(
            name="x",
            template_id=base.pk,
            zone=zone,
            account=account,
            actor=user,
            stateless=stateless,
            follow_channel=channel,
        )
    assert refused.value.field == "follow.channel"
    assert message in refused.value.message
    assert not VirtualMachine.objects.exists()


def test_a_channel_cannot_point_at_another_lineages_version(lineage, register, user):
    base, add_version = lineage
    promote(base, "stable", base, user)
    stranger = register(name="other-lineage")

    with pytest.raises(InvalidInput) as refused:
        promote(base, "stable", stranger, user)
    assert refused.value.field == "version"
    channel = Channel.objects.get(lineage=base, name="stable")
    assert channel.version_id == base.pk and channel.previous_version_id is None
    assert len(moves_of(channel)) == 1


def test_a_channel_cannot_point_at_an_inactive_or_removed_version(lineage, user):
    base, add_version = lineage
    v2 = add_version(V2_PATTERN)
    template_services.template_deactivate(template_id=v2.pk, actor=user)
    with pytest.raises(ChannelConflict, match="INACTIVE"):
        promote(base, "canary", v2, user)
    template_services.gc_sweep()
    v2.refresh_from_db()
    assert v2.state == "REMOVED"
    with pytest.raises(ChannelConflict, match="REMOVED") as refused:
        promote(base, "canary", v2, user)
    assert refused.value.status_code == 409
    assert not Channel.objects.filter(lineage=base, version__isnull=False).exists()


def test_a_version_without_ready_bytes_where_followers_run_is_refused(lineage, zone, account, user):
    base, add_version = lineage
    promote(base, "canary", base, user)
    deploy_follower(base, zone, account, user, "canary")
    downloading = add_version(V2_PATTERN, ready=False)

    with pytest.raises(ChannelConflict) as refused:
        promote(base, "canary", downloading, user)
    assert "no READY copy in zone(s) zone-a" in refused.value.message
    assert Channel.objects.get(lineage=base, name="canary").version_id == base.pk
    # With no follower anywhere, the same version may be promoted on another channel.
    assert promote(base, "stable", downloading, user).version_id == downloading.pk


def test_a_version_a_channel_points_at_is_never_removed(lineage, user):
    base, add_version = lineage
    v2 = add_version(V2_PATTERN)
    v3 = add_version(0x7C)
    promote(base, "stable", v2, user)
    assert reference_summary(v2)["channel"] == 1

    template_services.template_deactivate(template_id=v2.pk, actor=user)
    template_services.gc_sweep()
    v2.refresh_from_db()
    assert v2.state == "INACTIVE", "the channel holds it"

    promote(base, "stable", v3, user)
    template_services.gc_sweep()
    v2.refresh_from_db()
    assert v2.state == "REMOVED", "released by the move; a previous version is no reference"
    with pytest.raises(ChannelConflict, match="REMOVED"):
        channel_rollback(template_id=base.pk, name="stable", actor=user)
    assert Channel.objects.get(lineage=base, name="stable").version_id == v3.pk


def test_rollback_with_nothing_before_is_a_409(lineage, user):
    base, _ = lineage
    with pytest.raises(ChannelConflict, match="no previous version"):
        channel_rollback(template_id=base.pk, name="canary", actor=user)
    promote(base, "canary", base, user)
    with pytest.raises(ChannelConflict, match="no previous version"):
        channel_rollback(template_id=base.pk, name="canary", actor=user)


def test_latest_is_computed_and_cannot_be_moved(lineage, user):
    base, _ = lineage
    with pytest.raises(InvalidInput) as refused:
        promote(base, "latest", base, user)
    assert refused.value.field == "name"
    with pytest.raises(InvalidInput):
        channel_create(template_id=base.pk, name="latest", actor=user)


def test_custom_channels_follow_the_name_rule_and_are_unique(lineage, user):
    base, add_version = lineage
    for bad in ("", "Beta", "1beta", "b" * 33, "be_ta"):
        with pytest.raises(InvalidInput) as refused:
            channel_create(template_id=base.pk, name=bad, actor=user)
        assert refused.value.field == "name"
    beta = channel_create(template_id=base.pk, name="beta-1", actor=user)
    assert beta.version_id is None
    with pytest.raises(InvalidInput, match="already has"):
        channel_create(template_id=base.pk, name="beta-1", actor=user)
    for built_in in ("stable", "canary"):
        with pytest.raises(InvalidInput, match="built-in"):
            channel_create(template_id=base.pk, name=built_in, actor=user)
    # A version stands for its lineage.
    v2 = add_version(V2_PATTERN)
    assert channel_promote(
        template_id=v2.pk, name="beta-1", version_id=v2.pk, actor=user
    ).lineage_id == (base.pk)


def test_a_pool_on_a_channel_hands_out_the_promoted_version(lineage, zone, account, user):
    base, add_version = lineage
    promote(base, "canary", base, user)
    pool = vm_pools.vm_pool_create(
        name="desk",
        template_id=base.pk,
        zone=zone,
        account=account,
        size=1,
        actor=user,
        follow_channel="canary",
    )
    (vm,) = pool.vms.all()
    assert vm.follow_channel == "canary"
    assert vms.vm_deploy_on_host(vm_id=vm.pk).state == "STOPPED"
    assert [f.kind for f in channel_followers(lineage_id=base.pk, channel="canary")] == [
        "vm",
        "vm_pool",
    ]
    v2 = add_version(V2_PATTERN)

    promote(base, "canary", v2, user)
    assert rebuild_channel_followers(base_template_id=base.pk, channel="canary") == 1
    vms.vm_rebuild_on_host(vm_id=vm.pk)
    taken = vm_pools.vm_pool_take(pool_id=pool.pk, user=user)
    assert taken.template_id == v2.pk
    assert vms.vm_sync_domain(vm_id=vm.pk).error_text == ""
    taken.refresh_from_db()
    assert reads_pattern(taken.root_disk_path, V2_PATTERN)


def test_a_deactivated_channel_version_stops_new_deploys_not_followers(
    lineage, zone, account, user
):
    base, add_version = lineage
    v2 = add_version(V2_PATTERN)
    promote(base, "canary", v2, user)
    vm = stop(deploy_follower(base, zone, account, user, "canary"), user)
    template_services.template_deactivate(template_id=v2.pk, actor=user)

    with pytest.raises((vm_services.NothingToFollow, TemplateNotUsable)):
        deploy_follower(base, zone, account, user, "canary", name="new")
    vm.refresh_from_db()
    assert vm.template_id == v2.pk, "an existing follower keeps working"


def test_a_move_enqueues_the_rebuild_of_that_channels_followers(
    lineage, user, django_capture_on_commit_callbacks
):
    from unittest import mock

    base, _ = lineage
    with mock.patch("agents_app.handlers.rebuild_channel_followers_task.delay") as delay:
        with django_capture_on_commit_callbacks(execute=True):
            promote(base, "canary", base, user)
        delay.assert_called_once_with(base_template_id=base.pk, channel="canary")
        with django_capture_on_commit_callbacks(execute=True):
            promote(base, "canary", base, user)  # already there: no move, nothing sent
        assert delay.call_count == 1


def test_a_refused_promote_sends_nothing(lineage, user, django_capture_on_commit_callbacks):
    base, add_version = lineage
    v2 = add_version(V2_PATTERN)
    template_services.template_deactivate(template_id=v2.pk, actor=user)
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(ChannelConflict):
        promote(base, "canary", v2, user)
    assert callbacks == []
