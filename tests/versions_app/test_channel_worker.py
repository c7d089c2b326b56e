"""A real Celery worker process runs what a promote queues: the channel's stopped followers are
moved onto its version (and their rebuild sent to their host's queue); others stay."""

import time

import pytest

from agents_app.models import VirtualMachine
from tests.templates_app.test_celery_worker import worker  # noqa: F401  (fixture)
from versions_app.channels import channel_promote

from . import channel_fixtures
from .channel_fixtures import deploy_follower, stop

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# The fixtures of channel tests (a lineage with patterned versions on the test driver).
cloud = channel_fixtures.cloud
image_server = channel_fixtures.image_server
libvirt_backend = channel_fixtures.libvirt_backend
lineage = channel_fixtures.lineage


def wait_for_template(vm: VirtualMachine, template_id: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vm.refresh_from_db()
        if vm.template_id == template_id:
            return
        time.sleep(0.1)
    raise AssertionError(f"{vm} stayed on template {vm.template_id}, expected {template_id}")


def test_a_promote_moves_the_channels_followers_in_the_worker(
    worker,  # noqa: F811
    lineage,
    zone,
    account,
    user,
):
    base, add_version = lineage
    for name in ("canary", "stable"):
        channel_promote(template_id=base.pk, name=name, version_id=base.pk, actor=user)
    on_canary = stop(deploy_follower(base, zone, account, user, "canary", name="c"), user)
    on_stable = stop(deploy_follower(base, zone, account, user, "stable", name="s"), user)
    v2 = add_version(0x6B)

    channel_promote(template_id=base.pk, name="canary", version_id=v2.pk, actor=user)

    wait_for_template(on_canary, v2.pk)
    assert on_canary.transition_action == "rebuild", "its host is asked to rebuild the disk"
    time.sleep(1)  # the same task would have moved the stable follower by now, if it did
    on_stable.refresh_from_db()
    assert on_stable.template_id == base.pk
