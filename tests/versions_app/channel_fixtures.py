"""Fixtures of channel tests: a lineage whose versions hold different bytes (a qemu-io pattern
each), on a zone with an Up host of the libvirt test driver and a primary pool.

Import the fixtures into a test module (`from tests.versions_app.channel_fixtures import ...`).
"""

import hashlib
import subprocess

import pytest

from agents_app import services as vm_services
from agents_app.agent import vms
from agents_app.models import VirtualMachine
from templates_app.copies import store_copy_download
from templates_app.models import Template, TemplateStoreRef
from tests import libvirt_backends
from tests.agents_app.test_deploy import cloud, image_server  # noqa: F401  (fixtures)
from versions_app.services import template_version_create

BASE_PATTERN = 0x5A  # what tests.agents_app.test_deploy.image_server writes


@pytest.fixture
def libvirt_backend(tmp_path):
    """The test driver only."""
    with libvirt_backends.open_backend("test", tmp_path) as backend:
        yield backend


def patterned_image(tmp_path, pattern: int) -> bytes:
    image = tmp_path / f"image-{pattern:x}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), "16M"], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} 1M 64k", str(image)],
        check=True,
        capture_output=True,
    )
    return image.read_bytes()


@pytest.fixture
def lineage(cloud, user, httpserver, tmp_path):  # noqa: F811
    """A READY base template (pattern 0x5a) and `add_version(pattern, ready=True)` adding a
    version whose bytes carry `pattern` (READY in the zone's store unless `ready=False`)."""
    make, _host, _pool = cloud
    base = make("CACHE")

    def add_version(pattern: int, *, ready: bool = True) -> Template:
        data = patterned_image(tmp_path, pattern)
        path = f"/v-{pattern:x}.qcow2"
        httpserver.expect_request(path).respond_with_data(data)
        version = template_version_create(
            base_template_id=base.pk,
            actor=user,
            version_name=f"pattern {pattern:#x}",
            url=httpserver.url_for(path),
            checksum="{SHA-256}" + hashlib.sha256(data).hexdigest(),
        )
        if ready:
            store_copy_download(ref_id=TemplateStoreRef.objects.get(template=version).pk)
        return version

    return base, add_version


def deploy_follower(template, zone, account, user, channel: str, name="f") -> VirtualMachine:
    """A stateless VM following `channel`, deployed on its host as the host's worker would."""
    vm = vm_services.vm_deploy(
        name=name,
        template_id=template.pk,
        zone=zone,
        account=account,
        actor=user,
        stateless=True,
        follow_channel=channel,
    )
    return vms.vm_deploy_on_host(vm_id=vm.pk)


def stop(vm, user) -> VirtualMachine:
    """Stop through the service, then the host's work (the stateless disk is made again)."""
    vm_services.vm_stop(vm_id=vm.pk, actor=user)
    return vms.vm_sync_domain(vm_id=vm.pk, rebuild=True)


def reads_pattern(path: str, pattern: int) -> bool:
    result = subprocess.run(
        ["qemu-io", "-U", "-f", "qcow2", "-r", "-c", f"read -P {pattern} 1M 64k", path],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout
