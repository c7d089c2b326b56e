"""Case 3: the broker (a private Redis, nothing kept on disk) restarted in the middle of a run.

A download submitted through the web process before the restart, under way when Redis goes,
completes; one submitted after the restart (the web process and the worker reconnect) completes
too; nothing is left in progress.
"""

import hashlib
import time
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from templates_app.models import TemplateStoreRef

from .conftest import assert_nothing_stuck_or_partial
from .processes import Fault, PrivateRedis, StorageWorker, Web, qcow2_image, wait_until

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("faults"),
]


def test_work_continues_across_a_redis_restart(
    private_celery_queue, logs, server, loopback, store, zone, user, tmp_path
):
    data = qcow2_image(tmp_path / "r.qcow2", written="6M")
    server.files["/before.qcow2"] = data
    server.files["/after.qcow2"] = data
    # The first download takes ~4 s: long enough for Redis to go away and come back under it.
    server.plans["/before.qcow2"] = [Fault(kind="ok", chunk=256 * 1024, delay=0.15)]
    checksum = "{SHA-256}" + hashlib.sha256(data).hexdigest()
    token = Token.objects.create(user=user).key

    redis = PrivateRedis(logs)
    redis.start()
    env = {"CELERY_BROKER_URL": redis.url, "STENCIL_STORE_COPY_LEASE_SECONDS": "3"}
    # The web process sends downloads to the storage queue, here the test's private queue.
    web = Web(logs, STENCIL_STORAGE_QUEUE=private_celery_queue, **env)
    worker = StorageWorker(private_celery_queue, logs, broker_url=redis.url, **env)
    everything = [web, worker, redis]

    def tails() -> str:
        return "\n".join(p.tail() for p in everything)

    def register(name: str, path: str) -> TemplateStoreRef:
        body = {
            "name": name,
            "format": "QCOW2",
            "zones": [str(zone.uuid)],
            "url": server.url(path),
            "checksum": checksum,
        }
        status, answer = web.call("POST", "/api/v1/templates/", token, body)
        assert status == 201, (status, answer, tails())
        return TemplateStoreRef.objects.get(template__uuid=answer["id"])

    try:
        web.start()
        worker.start()
        before = register("before", "/before.qcow2")
        wait_until(
            lambda: TemplateStoreRef.objects.filter(
                pk=before.pk, download_state="DOWNLOAD_IN_PROGRESS", downloaded_bytes__gt=0
            ).exists(),
            what="the first download to be under way",
            logs=tails,
        )
        redis.kill()
        time.sleep(1)
        redis.start()
        after = register("after", "/after.qcow2")
        wait_until(
            lambda: (
                TemplateStoreRef.objects.filter(pk__in=[before.pk, after.pk], state="READY").count()
                == 2
            ),
            timeout=40,
            what="both downloads to finish",
            logs=tails,
        )
        assert worker.alive() and web.alive(), tails()
    finally:
        for process in everything:
            process.stop()
    for ref in TemplateStoreRef.objects.filter(pk__in=[before.pk, after.pk]):
        assert (ref.download_state, ref.attempts) == ("DOWNLOADED", 1), ref.error_text
    assert_nothing_stuck_or_partial(Path(store.path))
