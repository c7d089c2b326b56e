"""Channel races run for real: threads on separate PostgreSQL connections, many iterations.

- a promote during a deploy from the channel: the VM gets one of the two versions, whole (its
  row, its disk's backing copy and its bytes agree), never an error;
- two first promotes of a channel whose row does not exist yet: both succeed, one row;
- a promote against a delete and sweep of its target: either the channel holds the version
  (never REMOVED) or the promote is refused; never a channel on a REMOVED version.
"""

import pytest
from django.db import connection

from agents_app import services as vm_services
from agents_app.agent import vms
from agents_app.followers import rebuild_channel_followers
from agents_app.models import TemplatePoolRef, VirtualMachine
from templates_app import services as template_services
from templates_app.errors import StencilError
from tests.agents_app.test_deploy import backing_of
from tests.templates_app.test_races import run_together
from versions_app.channels import ChannelConflict, channel_promote
from versions_app.models import Channel

from . import channel_fixtures
from .channel_fixtures import BASE_PATTERN, reads_pattern

pytestmark = pytest.mark.django_db(transaction=True)

# The fixtures of channel tests (a lineage with patterned versions on the test driver).
cloud = channel_fixtures.cloud
image_server = channel_fixtures.image_server
libvirt_backend = channel_fixtures.libvirt_backend
lineage = channel_fixtures.lineage

ITERATIONS = 12
V2_PATTERN = 0x6B


def assert_no_channel_on_a_removed_version() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM versions_app_channel c
            JOIN templates_app_template t ON t.id = c.version_id
            WHERE t.state = 'REMOVED'
            """
        )
        assert cursor.fetchone()[0] == 0, "a channel points at a REMOVED version"


def test_a_promote_during_a_deploy_gives_one_version_or_the_other(lineage, zone, account, user):
    base, add_version = lineage
    v2 = add_version(V2_PATTERN)
    patterns = {base.pk: BASE_PATTERN, v2.pk: V2_PATTERN}
    channel_promote(template_id=base.pk, name="canary", version_id=base.pk, actor=user)
    got = set()

    for n in range(ITERATIONS):
        before, after = (base, v2) if n % 2 == 0 else (v2, base)

        def deploy(n=n):
            vm = vm_services.vm_deploy(
                name=f"race-{n}",
                template_id=base.pk,
                zone=zone,
                account=account,
                actor=user,
                stateless=True,
                follow_channel="canary",
            )
            return vms.vm_deploy_on_host(vm_id=vm.pk)

        def promote(after=after):
            moved = channel_promote(
                template_id=base.pk, name="canary", version_id=after.pk, actor=user
            )
            rebuild_channel_followers(base_template_id=base.pk, channel="canary")
            return moved

        vm, moved = run_together(deploy, promote)

        assert not isinstance(vm, StencilError), vm
        assert not isinstance(moved, StencilError), moved
        assert moved.version_id == after.pk
        vm = VirtualMachine.objects.get(pk=vm.pk)
        assert vm.state == "RUNNING" and vm.error_text == ""
        assert vm.template_id in (before.pk, after.pk)
        copy = TemplatePoolRef.objects.get(template_id=vm.template_id, pool=vm.pool)
        assert backing_of(vm.root_disk_path) == copy.install_path, "disk and row agree"
        assert reads_pattern(vm.root_disk_path, patterns[vm.template_id])
        got.add(vm.template_id == after.pk)
    # Not asserted: which side wins depends on the scheduler; both outcomes are correct.
    print(f"deploys that saw the promote: {sorted(got)}")


def test_two_first_promotes_of_a_channel_both_succeed(lineage, user):
    base, add_version = lineage
    v2 = add_version(V2_PATTERN)
    for _ in range(ITERATIONS):
        Channel.objects.filter(lineage=base, name="stable").delete()  # its row is made again
        results = run_together(
            lambda: channel_promote(
                template_id=base.pk, name="stable", version_id=base.pk, actor=user
            ),
            lambda: channel_promote(
                template_id=base.pk, name="stable", version_id=v2.pk, actor=user
            ),
        )
        assert not any(isinstance(r, Exception) for r in results), results
        (channel,) = Channel.objects.filter(lineage=base, name="stable")
        assert channel.version_id in (base.pk, v2.pk)


def test_a_promote_against_a_delete_and_sweep_of_its_target(lineage, user):
    base, add_version = lineage
    for n in range(ITERATIONS // 2):
        target = add_version(0x10 + n)

        def delete_and_sweep(target=target):
            template_services.template_deactivate(template_id=target.pk, actor=user)
            return template_services.gc_sweep(template_ids=[target.pk])

        promoted, _swept = run_together(
            lambda target=target: channel_promote(
                template_id=base.pk, name="canary", version_id=target.pk, actor=user
            ),
            delete_and_sweep,
        )
        target.refresh_from_db()
        if isinstance(promoted, ChannelConflict):
            assert target.state in ("INACTIVE", "REMOVED")
            assert not Channel.objects.filter(version=target).exists()
        else:
            assert not isinstance(promoted, Exception), promoted
            assert promoted.version_id == target.pk
            assert target.state == "INACTIVE", "held by the channel"
        assert_no_channel_on_a_removed_version()
