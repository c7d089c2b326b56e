"""Case 5: the image store runs out of space mid-download.

The store is a real file system that fills up: an 8 MiB tmpfs mounted for this test (the test
runs as root, as `make test` does here). The copy ends in DOWNLOAD_ERROR naming the lack of
space, its temporary file is gone, nothing is charged; a download to another store goes on.
"""

import hashlib
import subprocess
from pathlib import Path

import pytest

from templates_app import services
from templates_app.models import Account, TemplateStoreRef
from tests.templates_app.factories import ImageStoreFactory, ZoneFactory

from .conftest import assert_nothing_stuck_or_partial
from .processes import StorageWorker, qcow2_image, wait_until

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("faults"),
]


@pytest.fixture
def small_store(zone, tmp_path):
    mount = tmp_path / "small-store"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"cannot mount a tmpfs for the full store: {done.stderr}"
    try:
        yield ImageStoreFactory(zone=zone, name="small", path=str(mount))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_store_fails_the_copy_cleanly_and_another_store_goes_on(
    private_celery_queue, logs, server, loopback, small_store, account, user, tmp_path
):
    data = qcow2_image(tmp_path / "f.qcow2", written="12M")  # more than the 8 MiB store
    server.files["/f.qcow2"] = data
    checksum = "{SHA-256}" + hashlib.sha256(data).hexdigest()
    other_dir = tmp_path / "store-b"
    other_dir.mkdir()
    other_store = ImageStoreFactory(
        zone=ZoneFactory(name="zone-b"), name="store-b", path=str(other_dir)
    )

    worker = StorageWorker(private_celery_queue, logs)
    worker.start()
    try:
        full = services.template_register(
            account=account,
            actor=user,
            name="too-big",
            image_format="QCOW2",
            url=server.url("/f.qcow2"),
            checksum=checksum,
            zones=[small_store.zone],
        )
        fits = services.template_register(
            account=account,
            actor=user,
            name="fits",
            image_format="QCOW2",
            url=server.url("/f.qcow2"),
            checksum=checksum,
            zones=[other_store.zone],
        )
        copies = TemplateStoreRef.objects.filter(template__in=[full, fits])
        wait_until(
            lambda: (
                not copies.filter(
                    download_state__in=["NOT_DOWNLOADED", "DOWNLOAD_IN_PROGRESS"]
                ).exists()
            ),
            timeout=30,
            what="both downloads to end",
            logs=worker.tail,
        )
    finally:
        worker.stop()

    failed = TemplateStoreRef.objects.get(template=full)
    assert failed.download_state == "DOWNLOAD_ERROR"
    assert "no space" in failed.error_text.lower(), failed.error_text
    assert failed.charged_bytes == 0
    assert [p for p in Path(small_store.path).rglob("*") if p.is_file()] == [], "nothing left"
    ok = TemplateStoreRef.objects.get(template=fits)
    assert (ok.download_state, ok.state) == ("DOWNLOADED", "READY"), ok.error_text
    assert Account.objects.get(pk=account.pk).used_secondary_bytes == len(data)
    assert_nothing_stuck_or_partial(Path(small_store.path), other_dir)
