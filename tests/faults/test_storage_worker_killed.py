"""Case 1: the storage worker SIGKILLed in the middle of a download.

The killed attempt's message stays unacknowledged on Redis (its visibility timeout is an hour)
and its lease runs out; the restarted worker must finish the copy: READY, one image file, no
temporary file of either attempt, the account charged once.
"""

import hashlib
import time
from pathlib import Path

import pytest

from templates_app.models import Account, TemplateStoreRef

from .conftest import assert_nothing_stuck_or_partial
from .processes import Fault, StorageWorker, part_files, qcow2_image, wait_until

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("faults"),
]


def test_a_worker_killed_mid_download_is_finished_after_restart(
    private_celery_queue, logs, server, loopback, register, store, account, tmp_path
):
    data = qcow2_image(tmp_path / "k.qcow2", written="8M")
    server.files["/k.qcow2"] = data
    server.plans["/k.qcow2"] = [Fault(kind="ok", chunk=256 * 1024, delay=0.15)]  # ~5 s
    worker = StorageWorker(private_celery_queue, logs, STENCIL_STORE_COPY_LEASE_SECONDS="3")
    worker.start()
    try:
        template = register(
            url=server.url("/k.qcow2"), checksum="{SHA-256}" + hashlib.sha256(data).hexdigest()
        )
        copy = TemplateStoreRef.objects.get(template=template)
        wait_until(
            lambda: (
                TemplateStoreRef.objects.filter(
                    pk=copy.pk, download_state="DOWNLOAD_IN_PROGRESS", downloaded_bytes__gte=1 << 20
                ).exists()
                and part_files(Path(store.path))
            ),
            what="the download to be under way",
            logs=worker.tail,
        )
        worker.kill()
        copy.refresh_from_db()
        assert (copy.download_state, copy.attempts) == ("DOWNLOAD_IN_PROGRESS", 1)
        assert part_files(Path(store.path)), "the killed attempt left its partial file"

        started = time.monotonic()
        worker.start()
        wait_until(
            lambda: TemplateStoreRef.objects.filter(pk=copy.pk, state="READY").exists(),
            timeout=30,
            what="the copy to be finished by the restarted worker",
            logs=worker.tail,
        )
        recovered = time.monotonic() - started
    finally:
        worker.stop()

    copy.refresh_from_db()
    assert (copy.download_state, copy.attempts) == ("DOWNLOADED", 2), copy.error_text
    image = Path(store.path) / copy.install_path
    assert image.read_bytes() == data
    assert sorted(p.name for p in image.parent.iterdir()) == sorted(
        [image.name, "template.properties"]
    ), "one image, nothing else"
    assert Account.objects.get(pk=account.pk).used_secondary_bytes == len(data), "charged once"
    assert recovered < 25
    assert_nothing_stuck_or_partial(Path(store.path))
