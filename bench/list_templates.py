"""Benchmark: GET /api/v1/templates/ over 100,000 templates, served by gunicorn (stencil_bench).

Run from the repository root (`make bench`):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/list_templates.py

Whatever database DATABASE_URL names, this script uses `stencil_bench`. It loads the catalogue,
starts `gunicorn project.wsgi -w 2` on a free port of 127.0.0.1 (always stopped at the end),
and sends a bounded number of requests from 8 client threads as a non-staff user with a token.
Queries per request are counted by running the same request in-process. `--explain` also prints
EXPLAIN ANALYZE of the slowest statement of that request.
"""

import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common  # noqa: E402

N_TEMPLATES = 100_000
N_VMS = 100_000
N_ACCOUNTS = 100
USER_ACCOUNT_INDEX = 0  # the benchmark user belongs to bench-account-000
CLIENT_THREADS = 8
REQUESTS = 400
WARMUP_REQUESTS = 24
SEQUENTIAL_REQUESTS = 40
PAGE_SIZE = 50
DEEP_EVERY = 10  # every 10th request asks for a page further down
DEEP_PAGES = [2, 10, 50, 200, 500, 1000, 1400]
TARGET_P95_MS = 50.0
TARGET_QUERIES = 6
TARGET_TEXT = "targets: p95 < 50 ms, at most 6 queries per request"
SERVER_START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
PHASE_BUDGET = {"warm-up": 30.0, "sequential": 45.0, "concurrent": 120.0}  # seconds, at most


def state_of(pk: int) -> str:
    return "INACTIVE" if pk % 20 == 0 else "ACTIVE"


def is_public(pk: int) -> bool:
    return pk % 10 not in (3, 7)  # 20 % private to their (other) accounts


def load(store_path: str) -> dict:
    """Truncate and COPY the catalogue; create the benchmark user and token."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from agents_app.models import VirtualMachine
    from templates_app.models import Account, Template

    _common.truncate_app_tables()
    zone_id, _store_id, account_ids = _common.make_zone_store_accounts(
        accounts=N_ACCOUNTS, store_path=store_path
    )

    def account_of(pk: int) -> int:
        return account_ids[pk % N_ACCOUNTS]

    _common.copy_model_rows(
        Template,
        (
            _common.template_row(
                pk,
                account_id=account_of(pk),
                state=state_of(pk),
                is_public=is_public(pk),
                is_featured=pk % 100 == 1,
            )
            for pk in range(1, N_TEMPLATES + 1)
        ),
    )
    _common.copy_rows(
        "templates_app_template_zones",
        ["template_id", "zone_id"],
        ((pk, zone_id) for pk in range(1, N_TEMPLATES + 1)),
    )
    _common.copy_rows(
        "templates_app_templatedetail",
        ["template_id", "key", "value"],
        ((pk, "rootDiskController", "virtio") for pk in range(1, N_TEMPLATES + 1, 4)),
    )
    # Some private templates of other accounts are shared with the user's account.
    _common.copy_rows(
        "templates_app_template_shared_with",
        ["template_id", "account_id"],
        (
            (pk, account_ids[USER_ACCOUNT_INDEX])
            for pk in range(3, N_TEMPLATES + 1, 10)
            if pk % 200 == 3
        ),
    )
    vm_states = ["RUNNING", "STOPPED", "DESTROYED", "EXPUNGED"]
    _common.copy_model_rows(
        VirtualMachine,
        (
            _common.vm_row(
                vm_id,
                template_id=(vm_id * 7919) % N_TEMPLATES + 1,
                account_id=account_of((vm_id * 7919) % N_TEMPLATES + 1),
                zone_id=zone_id,
                state=vm_states[vm_id % len(vm_states)],
            )
            for vm_id in range(1, N_VMS + 1)
        ),
    )
    for table in ("templates_app_template", "agents_app_virtualmachine"):
        _common.reset_sequence(table)
    _common.analyze()

    User = get_user_model()
    User.objects.filter(username="bench-user").delete()
    user = User.objects.create_user(username="bench-user", password=None, is_staff=False)
    Account.objects.get(pk=account_ids[USER_ACCOUNT_INDEX]).members.add(user)
    token = Token.objects.create(user=user)
    visible = (
        Template.objects.filter(state="ACTIVE")
        .filter(is_public=True)
        .union(Template.objects.filter(state="ACTIVE", account_id=account_ids[USER_ACCOUNT_INDEX]))
        .union(Template.objects.filter(state="ACTIVE", shared_with=account_ids[USER_ACCOUNT_INDEX]))
        .count()
    )
    return {"token": token.key, "visible": visible}


def request_paths() -> list[str]:
    """REQUESTS paths: the first page mostly, every DEEP_EVERY-th one a deeper page."""
    paths = []
    for i in range(REQUESTS):
        path = f"/api/v1/templates/?page_size={PAGE_SIZE}"
        if i % DEEP_EVERY == DEEP_EVERY - 1:
            path += f"&page={DEEP_PAGES[(i // DEEP_EVERY) % len(DEEP_PAGES)]}"
        paths.append(path)
    return paths


def in_process_queries(token: str, path: str, explain: bool) -> list[dict]:
    """Run one request through Django in this process and capture its SQL."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    client.get(path, HTTP_HOST="127.0.0.1")  # warm caches (content types, plans)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, HTTP_HOST="127.0.0.1")
    assert response.status_code == 200, (response.status_code, response.content[:300])
    queries = captured.captured_queries
    if explain:
        slowest = max(queries, key=lambda q: float(q["time"]))
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"])
            plan = "\n".join(row[0] for row in cursor.fetchall())
        print(f"  EXPLAIN ANALYZE of the slowest statement ({slowest['time']} s):")
        print("    " + slowest["sql"][:2000])
        print("    " + plan.replace("\n", "\n    "))
    return queries


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, token: str) -> tuple[int, bytes, float]:
    """One GET on a new connection (gunicorn's sync workers close after each response)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Authorization": f"Token {token}"})
        response = conn.getresponse()
        body = response.read()
        status = response.status
    finally:
        conn.close()
    return status, body, (time.perf_counter() - start) * 1000


def start_server(port: int, database_url: str, log_path: Path) -> subprocess.Popen:
    gunicorn = _common.REPO_ROOT / ".venv" / "bin" / "gunicorn"
    if not gunicorn.exists():
        gunicorn = Path(sys.executable).parent / "gunicorn"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        DATABASE_CONN_MAX_AGE="60",
        LOG_LEVEL="WARNING",
    )
    env.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    env.setdefault("STENCIL_ENV", "development")
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(gunicorn), "project.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2"],
            cwd=_common.REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one at the end
        )


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # gunicorn's master stops its workers on SIGTERM
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_until_ready(proc: subprocess.Popen, port: int, token: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            status, body, _ = get(port, "/api/v1/templates/?page_size=1", token)
            if status == 200:
                return
            raise RuntimeError(f"server answered {status}: {body[:300]!r}")
        except OSError:
            time.sleep(0.2)
    log = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"gunicorn did not answer within {SERVER_START_TIMEOUT:.0f} s:\n{log}")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def run_clients(port: int, token: str, paths: list[str], threads: int, budget: float) -> dict:
    """Send each path once from `threads` threads, stopping early after `budget` seconds."""
    latencies: list[float] = []
    deep_latencies: list[float] = []
    first_latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(len(paths)))
    deadline = time.monotonic() + budget

    def worker():
        while True:
            with lock:
                index = next(next_index, None) if time.monotonic() < deadline else None
            if index is None:
                return
            try:
                status, body, ms = get(port, paths[index], token)
                ok = status == 200 and len(json.loads(body)["results"]) > 0
                error = None if ok else f"{paths[index]}: HTTP {status} {body[:200]!r}"
            except (OSError, ValueError, KeyError) as exc:
                ms, error = None, f"{paths[index]}: {exc!r}"
            with lock:
                if error:
                    failures.append(error)
                else:
                    latencies.append(ms)
                    is_deep = "&page=" in paths[index]
                    (deep_latencies if is_deep else first_latencies).append(ms)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=REQUEST_TIMEOUT * len(paths))
    elapsed = time.perf_counter() - start
    return {
        "latencies": latencies,
        "deep": deep_latencies,
        "first": first_latencies,
        "failures": failures,
        "elapsed": elapsed,
        "planned": len(paths),
    }


def summary(label: str, run: dict) -> dict:
    lat = run["latencies"]
    figures = {
        "p50": percentile(lat, 50),
        "p95": percentile(lat, 95),
        "p99": percentile(lat, 99),
        "rps": len(lat) / run["elapsed"],
    }
    done = len(lat) + len(run["failures"])
    cut = (
        f" (time budget reached: {done} of {run['planned']} sent)" if done < run["planned"] else ""
    )
    print(
        f"  {label}: {len(lat)} ok, {len(run['failures'])} failed in {run['elapsed']:.1f} s{cut}; "
        f"p50 {figures['p50']:.1f} ms, p95 {figures['p95']:.1f} ms, "
        f"p99 {figures['p99']:.1f} ms, {figures['rps']:.1f} requests/s"
    )
    first = run["first"]
    if run["deep"]:
        print(
            f"    first page only: p50 {percentile(first, 50):.1f} ms, "
            f"p95 {percentile(first, 95):.1f} ms; deeper pages ({len(run['deep'])}): "
            f"p50 {percentile(run['deep'], 50):.1f} ms, p95 {percentile(run['deep'], 95):.1f} ms"
        )
    for failure in run["failures"][:5]:
        print(f"    failed: {failure}")
    return figures


def main() -> int:
    explain = "--explain" in sys.argv[1:]
    database_url = _common.setup_django()
    print(
        f"Template listing benchmark: {N_TEMPLATES:,} templates, {N_VMS:,} VMs, "
        f"{N_ACCOUNTS} accounts; database {_common.BENCH_DB_NAME}"
    )
    with tempfile.TemporaryDirectory(prefix="stencil-bench-list-") as tmp:
        start = time.perf_counter()
        fixture = load(str(Path(tmp) / "store"))
        print(
            f"  loaded in {time.perf_counter() - start:.1f} s; "
            f"{fixture['visible']:,} ACTIVE templates visible to the non-staff user"
        )
        token = fixture["token"]
        first_page = f"/api/v1/templates/?page_size={PAGE_SIZE}"

        queries = in_process_queries(token, first_page, explain)
        print(f"  queries per request (in-process, {first_page}): {len(queries)}")
        for query in queries:
            sql = " ".join(query["sql"].split())
            print(f"    {float(query['time']) * 1000:7.1f} ms  {sql[:110]}")
        deep = in_process_queries(token, f"{first_page}&page={DEEP_PAGES[-1]}", False)
        deep_ms = sum(float(q["time"]) for q in deep) * 1000
        print(
            f"  page {DEEP_PAGES[-1]}: {len(deep)} queries, {deep_ms:.1f} ms in the database "
            f"(slowest: {max(float(q['time']) for q in deep) * 1000:.1f} ms)"
        )

        from django.db import connections

        connections.close_all()  # nothing of ours stays open while the server runs

        port = free_port()
        log_path = Path(tmp) / "gunicorn.log"
        proc = start_server(port, database_url, log_path)
        try:
            wait_until_ready(proc, port, token, log_path)
            print(f"  gunicorn project.wsgi -w 2 on 127.0.0.1:{port} (pid {proc.pid}) answers")
            paths = request_paths()
            run_clients(
                port, token, paths[:WARMUP_REQUESTS], CLIENT_THREADS, PHASE_BUDGET["warm-up"]
            )
            sequential = summary(
                "1 client (service time)",
                run_clients(
                    port, token, paths[:SEQUENTIAL_REQUESTS], 1, PHASE_BUDGET["sequential"]
                ),
            )
            concurrent_run = run_clients(
                port, token, paths, CLIENT_THREADS, PHASE_BUDGET["concurrent"]
            )
            concurrent = summary(f"{CLIENT_THREADS} client threads", concurrent_run)
        finally:
            stop_server(proc)

    print(f"  {TARGET_TEXT}")
    p95_ok = concurrent["p95"] < TARGET_P95_MS
    queries_ok = len(queries) <= TARGET_QUERIES
    print(
        f"  p95 ({CLIENT_THREADS} threads): {concurrent['p95']:.1f} ms: "
        f"{'MET' if p95_ok else 'MISSED'} (1 client: p95 {sequential['p95']:.1f} ms)"
    )
    print(f"  queries per request: {len(queries)}: {'MET' if queries_ok else 'MISSED'}")
    return 1 if concurrent_run["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
