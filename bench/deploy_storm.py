"""Benchmark: 50 concurrent deploys of one template onto one pool, and linked-clone deploy time.

Run from the repository root (`make bench`):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/deploy_storm.py

Whatever database DATABASE_URL names, this script uses `stencil_bench` (created and migrated
here; its catalogue tables are truncated first). The host is libvirt's in-process test driver
(a node XML whose `dir` pool is a real directory): libvirt writes no bytes, our qemu-img calls
write every one of them. The host side is a real agent (`manage.py run_agent`, a Celery worker
on the host's queue) on the Redis broker of CELERY_BROKER_URL (default redis://127.0.0.1:6379/14),
started on an emptied queue, beside gunicorn on the same database and broker. Before each timed copy
the source image is synced and dropped from the page cache (posix_fadvise DONTNEED, this file
only), so every timed copy reads it from disk as a copy from a mounted image store would.

1. One copy alone: `pool_copy_ensure` of a 1 GiB qcow2 full of data for a fresh template, twice
   before the storm and once after it (fresh templates, same bytes); the median of the three is
   "one copy's time" (on a small VM single copies of the same bytes vary several-fold).
2. The storm: 50 client threads released together by a barrier, each `POST /api/v1/vms/` to
   the production web server (the Procfile's gunicorn, warmed up first) on a connection opened
   before the barrier, for a fresh template with the same bytes; the agent runs the host side.
   Exactly one pool copy must be made; target: all 50 RUNNING within 1.5 x one copy's time. A
   deploy that finds the copy being made records its VM as waiting on it (one commit) and
   returns; the copy's finish deploys its waiters as one task on the host's queue. A sampler
   reports the longest transaction open meanwhile.
   2b. The same 50 deploys again once the copy exists: the fixed cost of 50 deploys, which
   the storm pays on top of its copy.
3. Linked clones: with the pool copies in place, a CACHE deploy (overlay, define, start) of a
   1 GiB template and of a sparse 8 GiB one, median of 5 each, run in this process (the agent
   is stopped first). Target: within 1.2 x. Their SQL statements per deploy are counted.

Every file (images, pool, node XML) lives in one temporary directory removed at the end.
"""

import contextlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
STORM = 50
CLONE_RUNS = 5
CLONE_WARMUP = 2
SMALL_SIZE = 1 * GIB  # written in full: the copy costs real I/O
BIG_SIZE = 8 * GIB  # sparse: only a few MiB are written
BIG_WRITES = [0, 4 * GIB, BIG_SIZE - 4 * MIB]  # 4 MiB of data at each offset
FILL_CHUNK = 256 * MIB
STORM_TARGET = 1.5  # storm wall time / one copy's time
CLONE_TARGET = 1.2  # 8 GiB / 1 GiB linked-clone deploy time (either way)
ALONE_BEFORE, ALONE_AFTER = 2, 1  # copies timed alone before and after the storm
# Store image (the other 1 GiB templates hardlink it), the 1 GiB pool copies, small files; margin.
NEEDED_BYTES = (2 + ALONE_BEFORE + ALONE_AFTER) * SMALL_SIZE + 256 * MIB + 1 * GIB
STORM_JOIN_SECONDS = 120.0  # per storm: the whole run stays under ~5 minutes
SUBPROCESS_TIMEOUT = 120.0
POOL_NAME = "primary"


def run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT)


def make_image(path: Path, size: int, writes: list[tuple[int, int]]) -> None:
    """A qcow2 of virtual size `size` with pattern 0x5a at each (offset, length)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)])
    commands: list[str] = []
    for offset, length in writes:
        commands += ["-c", f"write -q -P 0x5a {offset} {length}"]
    run(["qemu-io", "-f", "qcow2", *commands, str(path)])


@contextlib.contextmanager
def timed(module, name: str, into: list[float]):
    """Replace module.name by a wrapper that appends each call's duration to `into`."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    setattr(module, name, wrapper)
    try:
        yield into
    finally:
        setattr(module, name, original)


def cold(path: Path) -> None:
    """Flush dirty pages everywhere, then drop this file's pages from the page cache."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def check_connections_headroom() -> None:
    """50 threads + this one must fit under max_connections with what else is connected."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "(SELECT COUNT(*) FROM pg_stat_activity)"
        )
        max_conn, reserved, used = cursor.fetchone()
    free = max_conn - reserved - used
    print(
        f"PostgreSQL connections: max_connections {max_conn}, {reserved} reserved, {used} in use "
        f"(this one included); the storm opens {STORM} more"
    )
    if free < STORM + 2:  # the storm's threads, plus a lease keeper's connection
        sys.exit(f"only {free} connections free: stop other clients or raise max_connections")


def make_fixture(workdir: Path) -> dict:
    """Zone, store, account, an Up host on the test driver and its pool."""
    # Imported here: it imports models, which need django.setup() first.
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from agents_app.agent import heartbeat
    from agents_app.agent.virt import write_test_node_xml
    from agents_app.models import PrimaryPool
    from templates_app.models import Account, ImageStore, Zone

    store_dir = workdir / "store"
    pool_dir = workdir / "pool"
    store_dir.mkdir()
    pool_dir.mkdir()
    node_xml = workdir / "libvirt-node.xml"
    uri = write_test_node_xml(node_xml, pools={POOL_NAME: pool_dir})

    _common.truncate_app_tables()
    zone_id, store_id, (account_id,) = _common.make_zone_store_accounts(
        accounts=1, store_path=str(store_dir)
    )
    zone = Zone.objects.get(pk=zone_id)
    host = heartbeat.host_register(name="bench-kvm", zone=zone, libvirt_uri=uri)
    pool = PrimaryPool.objects.create(
        zone=zone, name="bench-pool", libvirt_pool_name=POOL_NAME, path=str(pool_dir)
    )
    pool.hosts.add(host)
    # Users and tokens outlive the truncated app tables: made once, joined to this account.
    user, _ = get_user_model().objects.get_or_create(username="bench-deployer")
    Account.objects.get(pk=account_id).members.add(user)
    return {
        "token": Token.objects.get_or_create(user=user)[0].key,
        "uri": uri,
        "node_xml": node_xml,
        "pool_dir": pool_dir,
        "zone": zone,
        "store": ImageStore.objects.get(pk=store_id),
        "account": Account.objects.get(pk=account_id),
        "host": host,
        "pool": pool,
    }


def make_template(fx: dict, name: str, size: int, *, bytes_from: Path | None = None, writes=()):
    """An ACTIVE CACHE qcow2 template with a READY copy on the store; returns (template, path).

    bytes_from: hardlink that image instead of writing a new one (same bytes, no extra space).
    """
    from templates_app.models import TemplateStoreRef
    from templates_app.services import create_template_row
    from templates_app.storepaths import absolute, relative_install_path

    template = create_template_row(
        account=fx["account"], name=name, format="QCOW2", primary_policy="CACHE"
    )
    template.zones.add(fx["zone"])
    install_path = relative_install_path(template)
    path = absolute(fx["store"], install_path)
    if bytes_from is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(bytes_from, path)
    else:
        make_image(path, size, list(writes))
    physical = path.stat().st_size
    TemplateStoreRef.objects.create(
        template=template,
        store=fx["store"],
        download_state="DOWNLOADED",
        state="READY",
        download_percent=100,
        downloaded_bytes=physical,
        size=size,
        physical_size=physical,
        install_path=install_path,
    )
    return template, path


def one_copy(fx: dict, template, source: Path, label: str) -> float:
    """Time pool_copy_ensure for a (template, pool) that has no copy yet."""
    from agents_app.agent import virt
    from agents_app.agent.pool_copies import pool_copy_ensure

    cold(source)
    converts: list[float] = []
    with timed(virt, "qemu_img_convert", converts):
        start = time.perf_counter()
        ref = pool_copy_ensure(
            template_id=template.pk, pool_id=fx["pool"].pk, libvirt_uri=fx["uri"]
        )
        seconds = time.perf_counter() - start
    print(
        f"  {label}: pool_copy_ensure {seconds:.2f} s (qemu-img convert {converts[0]:.2f} s), "
        f"{ref.physical_size / MIB:.0f} MiB written ({ref.physical_size / MIB / seconds:.0f} "
        f"MiB/s), state {ref.state}, attempts {ref.attempts}"
    )
    return seconds


def storm(fx: dict, template, source: Path, prefix: str = "storm") -> dict:
    """STORM client threads, released together, each `POST /api/v1/vms/` to the production
    server (gunicorn, as `make run` serves it) on a connection opened before the barrier; the
    real agent (run_agent on the Redis broker) does the host side. Each thread's deploy ends
    when the watcher sees its VM out of STARTING."""
    from django.db import connections

    from agents_app.models import VirtualMachine

    started: list[float] = []
    barrier = threading.Barrier(
        STORM, action=lambda: started.extend((time.perf_counter(), time.time()))
    )
    results: list[dict | None] = [None] * STORM
    headers = {"Authorization": f"Token {fx['token']}", "Content-Type": "application/json"}

    def deploy(n: int, watcher) -> None:
        result: dict = {"state": "NOT RUN", "error": ""}
        conn = http.client.HTTPConnection("127.0.0.1", fx["web_port"], timeout=60)
        try:
            conn.connect()  # connecting is not part of a deploy
            body = json.dumps(
                {
                    "name": f"{prefix}-{n:02d}",
                    "template": str(template.uuid),
                    "zone": str(fx["zone"].uuid),
                    "deploy": True,
                }
            )
            barrier.wait(timeout=60)
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/vms/", body=body, headers=headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            t1 = time.perf_counter()
            if response.status != 201:
                raise RuntimeError(f"POST /vms/ answered {response.status}: {answer}")
            watcher.watch(answer["id"])
            seen = watcher.wait(answer["id"], STORM_JOIN_SECONDS)
            if seen is None:
                raise RuntimeError(f"still STARTING after {STORM_JOIN_SECONDS:.0f} s")
            state, t2 = seen
            error, disk = VirtualMachine.objects.values_list("error_text", "root_disk_path").get(
                uuid=answer["id"]
            )
            result = {
                "state": state,
                "error": error,
                "disk": disk,
                "api": t1 - t0,
                "agent": t2 - t1,
                "api_end": t1,
                "end": t2,
            }
        except Exception as exc:  # reported below; the benchmark goes on
            result = {"state": "EXCEPTION", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            conn.close()
            results[n] = result
            connections.close_all()

    cold(source)
    with _common.StateWatcher() as watcher, TransactionSampler() as held:
        threads = [
            threading.Thread(target=deploy, args=(n, watcher), name=f"storm-{n}", daemon=True)
            for n in range(STORM)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + STORM_JOIN_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    alive = sum(thread.is_alive() for thread in threads)
    return {
        "started": started[0] if started else None,
        "started_epoch": started[1] if started else None,
        "results": results,
        "alive": alive,
        "held": held.longest,
    }


WARM_UP_CLIENTS = 16  # twice gunicorn's threads: each of them serves some


def warm_up(fx: dict) -> None:
    """A server that has been serving: every gunicorn thread has its database connection
    (CONN_MAX_AGE) and each worker has answered the storm's endpoint once. A fresh
    PostgreSQL connection (its fork, its empty catalogue caches) made the storm's first
    answers wait ~0.2 s. The POSTs are refused (no zone): nothing is created."""
    headers = {"Authorization": f"Token {fx['token']}", "Content-Type": "application/json"}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", fx["web_port"], timeout=30)
        try:
            for method, path, body in (
                ("GET", "/api/v1/vms/?page_size=1", None),
                ("POST", "/api/v1/vms/", json.dumps({"name": "warm-up"})),
            ):
                conn.request(method, path, body=body, headers=headers)
                conn.getresponse().read()
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(WARM_UP_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class TransactionSampler:
    """Samples pg_stat_activity every 20 ms during a storm: the longest-open transaction of any
    other session of this database (a waiting deploy holding one would show here)."""

    def __init__(self):
        self.longest = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        from django.db import connection

        try:
            with connection.cursor() as cursor:
                while not self.stop.wait(0.02):
                    cursor.execute(
                        "SELECT COALESCE(MAX(EXTRACT(EPOCH FROM now() - xact_start)), 0) "
                        "FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
                    )
                    self.longest = max(self.longest, float(cursor.fetchone()[0]))
        finally:
            connection.close()


def copy_events(ref) -> dict:
    """When the pool copy was claimed and finished (its Event rows)."""
    from django.contrib.contenttypes.models import ContentType

    from templates_app.models import Event

    rows = Event.objects.filter(
        content_type=ContentType.objects.get_for_model(type(ref)), object_id=ref.pk
    ).values_list("to_state", "created_at")
    return {"claims": sum(s == "DOWNLOAD_IN_PROGRESS" for s, _ in rows), **dict(rows)}


def backing_of(path: str) -> str | None:
    from templates_app.images.qemu import run_qemu_img

    out = run_qemu_img(["info", "-U", "-f", "qcow2", "--output=json", path]).stdout
    return json.loads(out).get("full-backing-filename")


def report_storm(fx: dict, template, run_: dict, alone_seconds: list[float]):
    """Print the storm's figures; returns (correct, target met, summary line, wall time)."""
    copy_seconds = statistics.median(alone_seconds)
    from agents_app.models import TemplatePoolRef, VirtualMachine

    results = [r or {"state": "NOT RUN", "error": ""} for r in run_["results"]]
    refs = list(TemplatePoolRef.objects.filter(template=template))
    running = VirtualMachine.objects.filter(template=template, state="RUNNING").count()
    states = Counter(str(r["state"]) for r in results)
    done = [r for r in results if "end" in r]
    wall = max(r["end"] for r in done) - run_["started"] if done and run_["started"] else None
    timeline = None
    pool_files = sorted(p.name for p in fx["pool_dir"].glob(f"tmpl-{template.unique_name}.*"))
    print(f"  pool copies (TemplatePoolRef rows) of this template: {len(refs)}")
    for ref in refs:
        events = copy_events(ref)
        print(
            f"    {ref.volume_name}: state {ref.state}, attempts {ref.attempts}, "
            f"copy claims recorded {events['claims']}"
        )
        if "DOWNLOAD_IN_PROGRESS" in events and "DOWNLOADED" in events and run_["started"]:
            claimed = events["DOWNLOAD_IN_PROGRESS"].timestamp() - run_["started_epoch"]
            copied = events["DOWNLOADED"].timestamp() - run_["started_epoch"]
            print(
                f"    timeline after the barrier: copy claimed at {claimed:.2f} s, DOWNLOADED "
                f"at {copied:.2f} s: the copy took {copied - claimed:.2f} s in the storm "
                f"(one copy alone: {copy_seconds:.2f} s)"
            )
            timeline = (claimed, copied)
    print(f"  this template's files in the pool: {len(pool_files)} ({', '.join(pool_files)})")
    print(f"  VMs RUNNING (database): {running} of {STORM}; thread outcomes: {dict(states)}")
    for r in results:
        if r["state"] != "RUNNING":
            print(f"    not running: {r['state']}: {r['error'][:300]}")
            break
    if run_["alive"]:
        print(f"  {run_['alive']} threads still running after {STORM_JOIN_SECONDS:.0f} s")
    if done:
        api = sorted(r["api"] for r in done)
        agent = sorted(r["agent"] for r in done)
        ends = sorted(r["end"] - run_["started"] for r in done)
        api_ends = sorted(r["api_end"] - run_["started"] for r in done)
        print(
            f"  POST /vms/ (API side): median {statistics.median(api) * 1000:.0f} ms, "
            f"max {api[-1] * 1000:.0f} ms; first answered {api_ends[0]:.2f} s, all {STORM} "
            f"{api_ends[-1]:.2f} s after the barrier"
        )
        print(
            "  agent side (POST answered to RUNNING seen; a waiter's includes its wait): "
            f"median {statistics.median(agent):.2f} s, max {agent[-1]:.2f} s"
        )
        print(
            f"  deploys finished after: first {ends[0]:.2f} s, median "
            f"{statistics.median(ends):.2f} s, last {ends[-1]:.2f} s"
        )
    print(f"  longest transaction open during the storm (any session): {run_['held']:.3f} s")
    backings = {backing_of(r["disk"]) for r in done if r["state"] == "RUNNING"}
    install_paths = {ref.install_path for ref in refs}
    print(f"  backing files of the RUNNING VMs' disks: {len(backings)}")
    correct = (
        len(refs) == 1
        and refs[0].attempts == 1
        and running == STORM
        and backings == install_paths
        and len(pool_files) == 1
        and not run_["alive"]
    )
    ratio = wall / copy_seconds if wall else None
    met = correct and ratio is not None and ratio <= STORM_TARGET
    if wall is not None:
        if timeline:
            claimed, copied = timeline
            print(
                f"  not copying: {claimed:.2f} s before the claim + {wall - copied:.2f} s after "
                f"DOWNLOADED ({STORM - 1} overlays, defines, starts) = "
                f"{wall - copied + claimed:.2f} s"
            )
        print(f"  wall time, barrier to last deploy RUNNING: {wall:.2f} s")
        print(f"  ratio to one copy's time ({copy_seconds:.2f} s): {ratio:.2f} x")
        print(
            f"  ratio to the slowest copy alone in this run ({max(alone_seconds):.2f} s): "
            f"{wall / max(alone_seconds):.2f} x"
        )
    _STORM_ROWS.append(
        {
            "figure": f"deploy storm ({STORM} deploys) / one copy",
            "value": wall or float("nan"),
            "unit": "s",
            "reference": f"one copy {copy_seconds:.2f} s",
            "ratio": ratio,
            "target": f"<= {STORM_TARGET}x, one copy, all RUNNING",
            "met": bool(met),
        }
    )
    summary = (
        f"storm: {len(refs)} copy ({', '.join(f'attempts {r.attempts}' for r in refs)}), "
        f"{running}/{STORM} RUNNING, wall {wall or float('nan'):.2f} s = "
        f"{ratio or float('nan'):.2f} x one copy ({copy_seconds:.2f} s); target <= "
        f"{STORM_TARGET} x: {'MET' if met else 'MISSED'}"
    )
    return correct, met, summary, wall


_STORM_ROWS: list[dict] = []  # the storm's figures, for bench/run_all.py


def report_floor(template, run_: dict, storm_wall: float | None) -> tuple[bool, str]:
    """The same storm once the copy exists: what 50 deploys cost without any copy."""
    from agents_app.models import TemplatePoolRef

    done = [r for r in run_["results"] if r and "end" in r]
    running = sum(r["state"] == "RUNNING" for r in done)
    refs = list(TemplatePoolRef.objects.filter(template=template))
    wall = max(r["end"] for r in done) - run_["started"] if done and run_["started"] else None
    ok = running == STORM and len(refs) == 1 and refs[0].attempts == 1 and not run_["alive"]
    if wall is None:
        return False, "floor: no deploy finished"
    ends = sorted(r["end"] - run_["started"] for r in done)
    api_ends = sorted(r["api_end"] - run_["started"] for r in done)
    print(
        f"  {running}/{STORM} RUNNING, copy attempts still {refs[0].attempts if refs else '-'}; "
        f"all POST /vms/ answered {api_ends[-1]:.2f} s after the barrier, first RUNNING "
        f"{ends[0]:.2f} s, last {wall:.2f} s"
    )
    print(f"  this is the fixed cost of {STORM} deploys on {os.cpu_count()} cores, copy or not")
    line = f"floor: {STORM} deploys on an existing copy take {wall:.2f} s"
    if storm_wall is not None:
        line += f" (the storm took {storm_wall:.2f} s)"
    return ok, line


@contextlib.contextmanager
def _not_sent(task):
    real = task.apply_async
    task.apply_async = lambda *args, **kwargs: None
    try:
        yield
    finally:
        task.apply_async = real


def linked_clones(fx: dict, small, big) -> tuple[bool, str]:
    """Median time of a CACHE deploy on an existing pool copy, 1 GiB vs 8 GiB template."""
    from django.db import connection

    from agents_app import services as vm_services
    from agents_app.agent import tasks, virt, vms
    from agents_app.agent.pool_copies import pool_copy_ensure
    from templates_app.images.qemu import run_qemu_img

    start = time.perf_counter()
    big_copy = pool_copy_ensure(
        template_id=big.pk, pool_id=fx["pool"].pk, libvirt_uri=fx["uri"]
    )  # the 1 GiB template's copy is there since [1]
    print(
        f"  pool copy of the 8 GiB template: {time.perf_counter() - start:.2f} s, "
        f"{big_copy.physical_size / MIB:.1f} MiB on disk"
    )
    os.sync()  # the storm's dirty pages must not be flushed on these timings

    overlay_times: list[float] = []
    timings: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    pair = (("1 GiB", small), ("8 GiB", big))
    statements: list[int] = []
    calls = [0]

    def count(execute, sql, params, many, context):
        calls[0] += 1
        return execute(sql, params, many, context)

    # This process runs the host side here: the tasks vm_deploy sends go nowhere.
    with (
        timed(virt, "write_overlay", overlay_times),
        _not_sent(tasks.vm_deploy_task),
    ):
        for round_ in range(-CLONE_WARMUP, CLONE_RUNS):  # rounds < 0 warm up, not counted
            # Alternate which size goes first (ABBA), so that a drift in load hits both alike.
            for label, template in pair if round_ % 2 else pair[::-1]:
                vm = vm_services.vm_deploy(
                    name=f"clone-{label[0]}-{round_}",
                    template_id=template.pk,
                    zone=fx["zone"],
                    account=fx["account"],
                    actor=None,
                )
                calls[0] = 0
                start = time.perf_counter()
                with connection.execute_wrapper(count):
                    vm = vms.vm_deploy_on_host(vm_id=vm.pk)
                seconds = time.perf_counter() - start
                if vm.state != "RUNNING":
                    raise RuntimeError(f"clone deploy failed: {vm.error_text}")
                virtual = json.loads(
                    run_qemu_img(
                        ["info", "-U", "-f", "qcow2", "--output=json", vm.root_disk_path]
                    ).stdout
                )["virtual-size"]
                sizes[label] = (virtual, Path(vm.root_disk_path).stat().st_size)
                if round_ >= 0:
                    entry = timings.setdefault(label, {"deploy": [], "overlay": []})
                    entry["deploy"].append(seconds)
                    entry["overlay"].append(overlay_times[-1])
                    statements.append(calls[0])

    medians = {label: statistics.median(t["deploy"]) for label, t in timings.items()}
    for label, t in timings.items():
        print(
            f"  {label}: deploy (vm_deploy_on_host) median {medians[label] * 1000:.1f} ms "
            f"[{', '.join(f'{s * 1000:.0f}' for s in t['deploy'])}], of which overlay "
            f"median {statistics.median(t['overlay']) * 1000:.1f} ms; overlay: virtual "
            f"{sizes[label][0] / GIB:.0f} GiB, file {sizes[label][1] / 1024:.0f} KiB"
        )
    print(
        f"  SQL statements per deploy on the host side (vm_deploy_on_host): median "
        f"{statistics.median(statements):.0f} (min {min(statements)}, max {max(statements)})"
    )
    ratio = medians["8 GiB"] / medians["1 GiB"]
    spread = max(ratio, 1 / ratio)
    met = spread <= CLONE_TARGET
    paired = statistics.median(
        big_s / small_s
        for big_s, small_s in zip(
            timings["8 GiB"]["deploy"], timings["1 GiB"]["deploy"], strict=True
        )
    )
    print(
        f"  8 GiB / 1 GiB: {ratio:.2f} x (ratio of the medians; median of the per-round "
        f"ratios {paired:.2f} x)"
    )
    summary = (
        f"linked clone: 1 GiB {medians['1 GiB'] * 1000:.0f} ms, 8 GiB "
        f"{medians['8 GiB'] * 1000:.0f} ms (median of {CLONE_RUNS}), ratio {ratio:.2f} x; "
        f"target within {CLONE_TARGET} x: {'MET' if met else 'MISSED'}"
    )
    return met, summary


def main() -> int:
    # Deploys enqueue a task for the host's agent on commit; a real agent runs them.
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    _common.setup_django()
    from agents_app.agent import virt

    for tool in ("qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (apt-get install qemu-utils)")
    check_connections_headroom()
    tmp_root = Path(tempfile.gettempdir())
    free = shutil.disk_usage(tmp_root).free
    print(f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    print(f"free space in {tmp_root}: {free / GIB:.1f} GiB (needs {NEEDED_BYTES / GIB:.1f} GiB)")
    if free < NEEDED_BYTES:
        sys.exit("not enough free space for the images: set TMPDIR to a larger file system")

    total_start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="stencil-bench-deploy-"))
    fx: dict = {}
    summaries: list[str] = []
    correct = True
    agent = web = None
    try:
        fx = make_fixture(workdir)
        print(f"test driver {fx['uri']}, pool directory {fx['pool_dir']}")
        virt.pool_info(virt.connection(fx["uri"]), POOL_NAME)  # open the connection once

        print(f"\n[fixture] a {SMALL_SIZE // GIB} GiB qcow2 full of data, written with qemu-io")
        start = time.perf_counter()
        fill = [(offset, FILL_CHUNK) for offset in range(0, SMALL_SIZE, FILL_CHUNK)]
        copy_tmpl, image = make_template(fx, "bench-copy-1", SMALL_SIZE, writes=fill)
        alone = [copy_tmpl] + [
            make_template(fx, f"bench-copy-{n}", SMALL_SIZE, bytes_from=image)[0]
            for n in range(2, ALONE_BEFORE + ALONE_AFTER + 1)
        ]
        storm_tmpl, _ = make_template(fx, "bench-storm", SMALL_SIZE, bytes_from=image)
        big_tmpl, big_image = make_template(
            fx, "bench-8g", BIG_SIZE, writes=[(offset, 4 * MIB) for offset in BIG_WRITES]
        )
        os.sync()
        print(
            f"  {image.stat().st_size / MIB:.0f} MiB file (the other 1 GiB templates hardlink "
            "it); "
            f"8 GiB sparse qcow2 {big_image.stat().st_size / MIB:.1f} MiB; "
            f"{time.perf_counter() - start:.1f} s"
        )

        print(f"\n[1] one pool copy alone ({ALONE_BEFORE} before the storm)")
        alone_seconds = [
            one_copy(fx, template, image, f"copy {n + 1}")
            for n, template in enumerate(alone[:ALONE_BEFORE])
        ]

        agent = _common.start_agent(
            fx["host"].name, fx["zone"].name, fx["uri"], workdir / "agent.log"
        )
        print(f"\nagent {fx['host'].name} up (pid {agent.pid}); load {_common.load_average()}")
        fx["web_port"] = _common.free_port()
        web_log = workdir / "web.log"
        web = _common.start_web(fx["web_port"], os.environ["DATABASE_URL"], web_log)
        _common.wait_for_web(web, fx["web_port"], fx["token"], "/api/v1/zones/", web_log)
        print(f"{' '.join(_common.web_command(fx['web_port'])[:9])} (pid {web.pid}) answers")
        warm_up(fx)
        print(f"\n[2] storm: {STORM} threads deploy one fresh template onto one pool")
        run_ = storm(fx, storm_tmpl, image)

        print(f"\n[1 cont.] one pool copy alone ({ALONE_AFTER} after the storm)")
        alone_seconds += [
            one_copy(fx, template, image, f"copy {ALONE_BEFORE + n + 1}")
            for n, template in enumerate(alone[ALONE_BEFORE:])
        ]
        copy_seconds = statistics.median(alone_seconds)
        print(f"  one copy's time: {copy_seconds:.2f} s (median of {len(alone_seconds)})")

        print("\n[2 cont.] storm results")
        ok, _met, line, storm_wall = report_storm(fx, storm_tmpl, run_, alone_seconds)
        correct = correct and ok
        summaries.append(line)

        print(f"\n[2b] the same {STORM} concurrent deploys again, now that the copy exists")
        floor = storm(fx, storm_tmpl, image, prefix="floor")
        _common.stop_web(web)
        web = None
        _common.stop_agent(agent)
        agent = None
        ok, line = report_floor(storm_tmpl, floor, storm_wall)
        correct = correct and ok
        summaries.append(line)

        print(f"\n[3] linked-clone deploy on an existing pool copy, median of {CLONE_RUNS}")
        _met, line = linked_clones(fx, copy_tmpl, big_tmpl)
        summaries.append(line)
    finally:
        if web is not None:
            _common.stop_web(web)
        if agent is not None:
            _common.stop_agent(agent)
        if fx:
            virt.close_connections(fx["uri"])  # the test driver's domains and volumes go too
        with contextlib.suppress(FileNotFoundError):
            (workdir / "libvirt-node.xml").unlink()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\nremoved {workdir}: {'gone' if not workdir.exists() else 'STILL THERE'}")

    print(
        f"\nsummary ({time.perf_counter() - total_start:.0f} s in all; load average now "
        f"{os.getloadavg()[0]:.2f})"
    )
    for line in summaries:
        print(f"  {line}")
    print(
        f"  correctness (one copy, attempts 1, all RUNNING on it): {'OK' if correct else 'FAILED'}"
    )
    _common.report("deploy_storm", _STORM_ROWS)
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
