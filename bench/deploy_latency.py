"""Benchmark: one deploy of a template already on the pool, API call to RUNNING.

A real agent (`manage.py run_agent`, a Celery worker on the host's queue, libvirt test driver)
on the Redis broker of CELERY_BROKER_URL (default redis://127.0.0.1:6379/14); the API is called
in-process (DRF's APIClient, a non-staff member of the account), and each deploy is timed
until its VM leaves STARTING (polled every 10 ms). p50/p95 over 50 sequential deploys, then
over 50 deploys from 8 concurrent clients. Target: p50 < 300 ms. Database: stencil_bench
(bench/_common.py), truncated first.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/deploy_latency.py
"""

import os
import shutil
import signal
import socket
import statistics
import subprocess
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


def start_agent(name: str, zone: str, uri: str, log: Path) -> subprocess.Popen:
    from project.celery import app

    env = {**os.environ, "STENCIL_URL_ALLOW_LOOPBACK": "true", "LOG_LEVEL": "WARNING"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "run_agent", "--name", name, "--zone", zone]
            + ["--libvirt-uri", uri, "--loglevel", "WARNING"],
            cwd=_common.REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = f"agent-{name}@{socket.gethostname()}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if app.control.ping(destination=[worker], timeout=0.5):
            return proc
    stop(proc)
    raise RuntimeError(f"the agent did not start:\n{log.read_text(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def deploy_once(client, template, zone, name: str) -> float:
    from django.db import connection

    from agents_app.models import VirtualMachine

    start = time.perf_counter()
    response = client.post(
        "/api/v1/vms/",
        {"name": name, "template": str(template.uuid), "zone": str(zone.uuid)},
        format="json",
        HTTP_HOST="127.0.0.1",
    )
    assert response.status_code == 201, (response.status_code, response.content[:300])
    vm_uuid = response.data["id"]
    deadline = time.monotonic() + DEPLOY_TIMEOUT
    while time.monotonic() < deadline:
        state = VirtualMachine.objects.filter(uuid=vm_uuid).values_list("state", flat=True)[0]
        if state != "STARTING":
            break
        time.sleep(0.01)
    else:
        raise RuntimeError(f"{name}: still STARTING after {DEPLOY_TIMEOUT:.0f} s")
    elapsed = (time.perf_counter() - start) * 1000
    if threading.current_thread() is not threading.main_thread():
        connection.close()  # each client thread's own connection, not kept across deploys
    assert state == "RUNNING", f"{name}: {state}"
    return elapsed


def main() -> int:
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    _common.setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connections
    from rest_framework.test import APIClient

    from bench import deploy_storm

    workdir = Path(tempfile.mkdtemp(prefix="stencil-bench-latency-"))
    agent = None
    try:
        fx = deploy_storm.make_fixture(workdir)
        template, _ = deploy_storm.make_template(
            fx, "bench-latency", IMAGE_SIZE, writes=[(0, 4 << 20)]
        )
        User = get_user_model()
        User.objects.filter(username="bench-deployer").delete()
        user = User.objects.create_user(username="bench-deployer", password=None)
        fx["account"].members.add(user)
        agent = start_agent(fx["host"].name, fx["zone"].name, fx["uri"], workdir / "agent.log")
        print(f"agent {fx['host'].name} up (pid {agent.pid}); load {_common.load_average()}")

        def client():
            api = APIClient()
            api.force_authenticate(user)
            return api

        warm = deploy_once(client(), template, fx["zone"], "warm-0")
        print(f"  first deploy (pool copy made): {warm:.0f} ms")
        sequential = [
            deploy_once(client(), template, fx["zone"], f"seq-{n}") for n in range(SEQUENTIAL)
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
                    return
                try:
                    ms = deploy_once(api, template, fx["zone"], f"conc-{n}")
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
        if agent is not None:
            stop(agent)
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
