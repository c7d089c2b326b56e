"""Benchmark: one deploy of a template already on the pool, API call to RUNNING.

A real agent (`manage.py run_agent`, a Celery worker on the host's queue, libvirt test driver)
on the Redis broker of CELERY_BROKER_URL (default redis://127.0.0.1:6379/14); the API is called
in-process (DRF's APIClient, a non-staff member of the account), and each deploy is timed
until its VM leaves STARTING (one watcher thread polls every 10 ms for all clients). p50/p95
over 50 sequential deploys, then over 50 deploys from 8 concurrent clients. Target: p50 <
300 ms. Database: stencil_bench (bench/_common.py), truncated first.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/deploy_latency.py
"""

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common  # noqa: E402

SEQUENTIAL = 50
CONCURRENT = 50
CLIENTS = 8
TARGET_P50_MS = 300.0
IMAGE_SIZE = 64 << 20
DEPLOY_TIMEOUT = 60.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))]


def deploy_once(client, watcher, template, zone, name: str) -> float:
    start = time.perf_counter()
    response = client.post(
        "/api/v1/vms/",
        {"name": name, "template": str(template.uuid), "zone": str(zone.uuid)},
        format="json",
        HTTP_HOST="127.0.0.1",
    )
    assert response.status_code == 201, (response.status_code, response.content[:300])
    vm_uuid = response.data["id"]
    watcher.watch(vm_uuid)
    seen = watcher.wait(vm_uuid, DEPLOY_TIMEOUT)
    if seen is None:
        raise RuntimeError(f"{name}: still STARTING after {DEPLOY_TIMEOUT:.0f} s")
    state, at = seen
    assert state == "RUNNING", f"{name}: {state}"
    return (at - start) * 1000


def main() -> int:
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    _common.setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection, connections
    from rest_framework.test import APIClient

    from bench import deploy_storm

    workdir = Path(tempfile.mkdtemp(prefix="stencil-bench-latency-"))
    agent = None
    stack = contextlib.ExitStack()
    try:
        fx = deploy_storm.make_fixture(workdir)
        template, _ = deploy_storm.make_template(
            fx, "bench-latency", IMAGE_SIZE, writes=[(0, 4 << 20)]
        )
        User = get_user_model()
        User.objects.filter(username="bench-deployer").delete()
        user = User.objects.create_user(username="bench-deployer", password=None)
        fx["account"].members.add(user)
        agent = _common.start_agent(
            fx["host"].name, fx["zone"].name, fx["uri"], workdir / "agent.log"
        )
        print(f"agent {fx['host'].name} up (pid {agent.pid}); load {_common.load_average()}")

        def client():
            api = APIClient()
            api.force_authenticate(user)
            return api

        watcher = stack.enter_context(_common.StateWatcher())
        warm = deploy_once(client(), watcher, template, fx["zone"], "warm-0")
        print(f"  first deploy (pool copy made): {warm:.0f} ms")
        sequential = [
            deploy_once(client(), watcher, template, fx["zone"], f"seq-{n}")
            for n in range(SEQUENTIAL)
        ]
        print(
            f"  {SEQUENTIAL} sequential: p50 {statistics.median(sequential):.0f} ms, "
            f"p95 {percentile(sequential, 95):.0f} ms (load {_common.load_average()})"
        )
        connections.close_all()
        concurrent: list[float] = []
        errors: list[str] = []
        names = iter(range(CONCURRENT))
        lock = threading.Lock()

        def worker():
            api = client()
            while True:
                with lock:
                    n = next(names, None)
                if n is None:
                    connection.close()  # this client thread's own connection
                    return
                try:
                    ms = deploy_once(api, watcher, template, fx["zone"], f"conc-{n}")
                except Exception as exc:  # reported below; the other clients go on
                    with lock:
                        errors.append(repr(exc))
                    continue
                with lock:
                    concurrent.append(ms)

        threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DEPLOY_TIMEOUT * CONCURRENT)
        wall = time.perf_counter() - started
        print(
            f"  {CONCURRENT} from {CLIENTS} clients: p50 {statistics.median(concurrent):.0f} ms, "
            f"p95 {percentile(concurrent, 95):.0f} ms, {len(concurrent) / wall:.1f} deploys/s, "
            f"{len(errors)} failed (load {_common.load_average()})"
        )
        for error in errors[:5]:
            print(f"    failed: {error}")
    finally:
        stack.close()
        if agent is not None:
            _common.stop_agent(agent)
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [
        {
            "figure": f"deploy latency p50, {SEQUENTIAL} sequential",
            "value": statistics.median(sequential),
            "unit": "ms",
            "reference": f"p95 {percentile(sequential, 95):.0f} ms",
            "target": f"< {TARGET_P50_MS:.0f} ms",
            "met": statistics.median(sequential) < TARGET_P50_MS,
        },
        {
            "figure": f"deploy latency p50, {CLIENTS} clients",
            "value": statistics.median(concurrent),
            "unit": "ms",
            "reference": f"p95 {percentile(concurrent, 95):.0f} ms",
            "target": f"< {TARGET_P50_MS:.0f} ms",
            "met": statistics.median(concurrent) < TARGET_P50_MS,
        },
    ]
    _common.report("deploy_latency", rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
