"""Case 6: an HTTP server that answers 500, truncates, resets and stalls, through the real
storage worker: each failure is retried with backoff, resumed with Range from the bytes already
written, and named in the worker's log; a server that never recovers ends in DOWNLOAD_ERROR
naming its status.
"""

import hashlib
import re
from pathlib import Path

import pytest

from templates_app.models import Account, TemplateStoreRef

from .conftest import assert_nothing_stuck_or_partial
from .processes import Fault, StorageWorker, qcow2_image, wait_until

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("faults"),
]

MIB = 1 << 20


def test_a_flaky_server_is_retried_resumed_and_its_errors_named(
    private_celery_queue, logs, server, loopback, register, store, account
):
    data = qcow2_image(Path(store.path).parent / "flaky.qcow2", written="8M")
    server.files["/flaky.qcow2"] = data
    server.files["/down.qcow2"] = data
    server.plans["/flaky.qcow2"] = [
        Fault(kind="status", status=500),
        Fault(kind="truncate", after=2 * MIB),
        Fault(kind="reset", after=2 * MIB),
        Fault(kind="stall", after=1 * MIB, seconds=4),
        Fault(kind="ok"),
    ]
    server.plans["/down.qcow2"] = [Fault(kind="status", status=503)] * 10
    worker = StorageWorker(
        private_celery_queue,
        logs,
        STENCIL_DOWNLOAD_MAX_ATTEMPTS="5",
        STENCIL_DOWNLOAD_BACKOFF_BASE="0.2",
        STENCIL_DOWNLOAD_STALL_TIMEOUT="1",
        STENCIL_DOWNLOAD_READ_TIMEOUT="5",
    )
    worker.start()
    try:
        checksum = "{SHA-256}" + hashlib.sha256(data).hexdigest()
        flaky = register(name="flaky", url=server.url("/flaky.qcow2"), checksum=checksum)
        down = register(name="down", url=server.url("/down.qcow2"), checksum=checksum)
        copies = TemplateStoreRef.objects.filter(template__in=[flaky, down])
        wait_until(
            lambda: (
                not copies.filter(
                    download_state__in=["NOT_DOWNLOADED", "DOWNLOAD_IN_PROGRESS"]
                ).exists()
            ),
            timeout=40,
            what="both downloads to end",
            logs=worker.tail,
        )
    finally:
        worker.stop()
    log = worker.log.read_text(errors="replace")

    ok = TemplateStoreRef.objects.get(template=flaky)
    assert (ok.download_state, ok.state, ok.attempts) == ("DOWNLOADED", "READY", 1), ok.error_text
    assert (Path(store.path) / ok.install_path).read_bytes() == data
    flaky_requests = [s for s in server.seen if s.path == "/flaky.qcow2"]
    assert [s.fault for s in flaky_requests] == ["status", "truncate", "reset", "stall", "ok"]
    assert [s.range for s in flaky_requests[:2]] == ["", ""], "nothing to resume yet"
    offsets = [int(re.fullmatch(r"bytes=(\d+)-", s.range).group(1)) for s in flaky_requests[2:]]
    assert offsets[0] == 2 * MIB, "resumed after the truncated body"
    assert offsets == sorted(offsets) and offsets[-1] > 2 * MIB, offsets
    # Each failure named in the worker's log, with the backoff that followed it.
    for named in (
        r"\(attempt 1 of 5\): HTTP 500 Internal Server Error from .*; retrying in 0\.20 s",
        r"\(attempt 2 of 5\): connection closed after 2097152 of \d+ bytes .*; retrying in 0\.40 s",
        r"\(attempt 3 of 5\): transfer from .* failed: .*reset.*; retrying in 0\.80 s",
        r"\(attempt 4 of 5\): no data from .* for 1 s .*; retrying in 1\.60 s",
    ):
        assert re.search(named, log), f"{named!r} not in the worker's log:\n{log[-4000:]}"

    failed = TemplateStoreRef.objects.get(template=down)
    assert failed.download_state == "DOWNLOAD_ERROR"
    assert "HTTP 503" in failed.error_text, failed.error_text
    assert len([s for s in server.seen if s.path == "/down.qcow2"]) == 5, "tried 5 times"
    assert Account.objects.get(pk=account.pk).used_secondary_bytes == len(data)
    assert_nothing_stuck_or_partial(Path(store.path))
