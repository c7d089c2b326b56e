"""Benchmark: a fleet of 8 real agents (run_agent on libvirt test-driver hosts) in one zone.

400 deploys of 20 templates (16 MiB qcow2 each, READY on the store) through the API from 8
client threads (in-process APIClient), each host with its own directory pool. Figures:
deploys per second (first API call to the last VM out of STARTING), the spread across hosts
(no host more than 1.5x the mean) and exactly one pool copy per (template, pool) used.
Broker: CELERY_BROKER_URL (default redis://127.0.0.1:6379/14). Database: stencil_bench.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/fleet.py
"""

import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common  # noqa: E402

AGENTS = int(os.environ.get("STENCIL_BENCH_FLEET_AGENTS", "8"))
DEPLOYS = int(os.environ.get("STENCIL_BENCH_FLEET_DEPLOYS", "400"))
TEMPLATES = 20
CLIENTS = 8
IMAGE_SIZE = 16 << 20
SPREAD_TARGET = 1.5
DEPLOY_TIMEOUT = 300.0


def main() -> int:
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    _common.setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection, connections
    from rest_framework.test import APIClient

    from agents_app.agent.virt import write_test_node_xml
    from agents_app.models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine
    from bench import deploy_storm
    from templates_app.models import Account, ImageStore, Zone

    workdir = Path(tempfile.mkdtemp(prefix="stencil-bench-fleet-"))
    agents = []
    failures: list[str] = []
    try:
        _common.truncate_app_tables()
        (workdir / "store").mkdir()
        zone_id, store_id, (account_id,) = _common.make_zone_store_accounts(
            accounts=1, store_path=str(workdir / "store")
        )
        fx = {
            "zone": Zone.objects.get(pk=zone_id),
            "store": ImageStore.objects.get(pk=store_id),
            "account": Account.objects.get(pk=account_id),
        }
        first, image = deploy_storm.make_template(fx, "fleet-0", IMAGE_SIZE, writes=[(0, 1 << 20)])
        templates = [first] + [
            deploy_storm.make_template(fx, f"fleet-{n}", IMAGE_SIZE, bytes_from=image)[0]
            for n in range(1, TEMPLATES)
        ]
        User = get_user_model()
        User.objects.filter(username="bench-fleet").delete()
        user = User.objects.create_user(username="bench-fleet", password=None)
        fx["account"].members.add(user)
        pools = []
        for i in range(AGENTS):
            pool_dir = workdir / f"pool-{i}"
            pool_dir.mkdir()
            uri = write_test_node_xml(workdir / f"node-{i}.xml", pools={f"pool-{i}": pool_dir})
            name = f"fleet-kvm-{i}"
            agents.append(_common.start_agent(name, fx["zone"].name, uri, workdir / f"{name}.log"))
            pool = PrimaryPool.objects.create(
                zone=fx["zone"], name=f"pool-{i}", libvirt_pool_name=f"pool-{i}", path=str(pool_dir)
            )
            pool.hosts.add(Host.objects.get(name=name))
            pools.append(pool)
        print(f"{AGENTS} agents up; load {_common.load_average()}")
        connections.close_all()

        zone_uuid = str(fx["zone"].uuid)
        names = iter(range(DEPLOYS))
        lock = threading.Lock()
        created: list[str] = []

        def client() -> None:
            api = APIClient()
            api.force_authenticate(user)
            while True:
                with lock:
                    n = next(names, None)
                if n is None:
                    connection.close()
                    return
                template = templates[n % TEMPLATES]
                response = api.post(
                    "/api/v1/vms/",
                    {"name": f"f-{n}", "template": str(template.uuid), "zone": zone_uuid},
                    format="json",
                    HTTP_HOST="127.0.0.1",
                )
                with lock:
                    if response.status_code == 201:
                        created.append(response.data["id"])
                    else:
                        failures.append(f"{response.status_code} {response.content[:200]!r}")

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DEPLOY_TIMEOUT)
        api_done = time.perf_counter() - started
        deadline = time.monotonic() + DEPLOY_TIMEOUT
        while time.monotonic() < deadline:
            if not VirtualMachine.objects.filter(uuid__in=created, state="STARTING").exists():
                break
            time.sleep(0.2)
        wall = time.perf_counter() - started
        states = Counter(
            VirtualMachine.objects.filter(uuid__in=created).values_list("state", flat=True)
        )
        per_host = Counter(
            VirtualMachine.objects.filter(uuid__in=created, state="RUNNING").values_list(
                "host__name", flat=True
            )
        )
        copies = Counter(TemplatePoolRef.objects.values_list("template_id", "pool_id"))
        attempts = list(TemplatePoolRef.objects.values_list("attempts", flat=True))
    finally:
        for agent in agents:
            _common.stop_agent(agent)
        shutil.rmtree(workdir, ignore_errors=True)
    running = states.get("RUNNING", 0)
    mean = running / AGENTS if AGENTS else 0
    spread = max(per_host.values(), default=0) / mean if mean else float("inf")
    single = all(n == 1 for n in copies.values()) and all(a == 1 for a in attempts)
    print(
        f"  {DEPLOYS} deploys: API calls done in {api_done:.1f} s, last out of STARTING after "
        f"{wall:.1f} s: {running / wall:.1f} deploys/s; states {dict(states)}; "
        f"{len(failures)} API failures"
    )
    print(f"  per host: {dict(sorted(per_host.items()))}; max / mean {spread:.2f}")
    print(
        f"  pool copies: {len(copies)} (template, pool) pairs, "
        f"{sum(copies.values())} rows, attempts {Counter(attempts)}"
    )
    for failure in failures[:5]:
        print(f"    failed: {failure}")
    rows = [
        {
            "figure": f"fleet deploys/s ({AGENTS} agents, {DEPLOYS} deploys)",
            "value": running / wall,
            "unit": "/s",
            "reference": f"{running}/{DEPLOYS} RUNNING",
            "target": "all RUNNING",
            "met": running == DEPLOYS,
        },
        {
            "figure": "fleet spread, busiest host / mean",
            "value": spread,
            "unit": "x",
            "target": f"<= {SPREAD_TARGET}x",
            "met": spread <= SPREAD_TARGET,
        },
        {
            "figure": "fleet pool copies per (template, pool)",
            "value": float(max(copies.values(), default=0)),
            "unit": "",
            "reference": f"{len(copies)} pairs",
            "target": "exactly 1, attempts 1",
            "met": single,
        },
    ]
    _common.report("fleet", rows)
    return 0 if single and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
