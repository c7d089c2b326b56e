"""Benchmark: GET /api/v1/templates/ over 100,000 templates, served by gunicorn (stencil_bench).

Run from the repository root (`make bench`):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/list_templates.py

Whatever database DATABASE_URL names, this script uses `stencil_bench` (STENCIL_BENCH_DB). It
loads the catalogue, starts the Procfile's `web` command (what `make run` serves: gunicorn
gthread, 2 workers x 4 threads) on a free port of 127.0.0.1 (always stopped at the end), and
sends a bounded number of requests from 8 client threads as a non-staff user with a token, each
thread on its own kept-alive connection (so it measures the server, not TCP set-up).
Queries per request are counted by running the same request in-process. `--explain` also prints
EXPLAIN ANALYZE of the slowest statement of that request.
"""

import http.client
import json
import math
import os
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
REQUESTS = 800  # ~3 s at 8 clients: a p95 of 240 samples moved by 20 ms run to run
WARMUP_REQUESTS = 24
SEQUENTIAL_REQUESTS = 40
PAGE_SIZE = 50
DEEP_EVERY = 10  # every 10th request asks for a page further down
TARGET_P95_MS = 50.0
TARGET_QUERIES = 6
TARGET_TEXT = "targets: p95 < 50 ms, at most 6 queries per request"
REQUEST_TIMEOUT = 30.0
PHASE_BUDGET = {"warm-up": 20.0, "sequential": 30.0, "concurrent": 60.0}  # seconds, at most


def state_of(pk: int) -> str:
    return "INACTIVE" if pk % 20 == 0 else "ACTIVE"


def is_public(pk: int) -> bool:
    return pk % 10 not in (3, 7)  # 20 % private to their (other) accounts


def load(store_path: str, n: int) -> dict:
    """Truncate and build the catalogue in SQL (generate_series); create the user and token."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from agents_app.models import VirtualMachine
    from templates_app.models import Account, Template

    _common.truncate_app_tables()
    zone_id, _store_id, account_ids = _common.make_zone_store_accounts(
        accounts=N_ACCOUNTS, store_path=store_path
    )
    first = account_ids[0]
    assert account_ids == list(range(first, first + N_ACCOUNTS))
    user_account = account_ids[USER_ACCOUNT_INDEX]
    account = f"({first} + pk % {N_ACCOUNTS})"
    now = f"'{_common.FIXTURE_NOW.isoformat()}'::timestamptz"
    created = f"({now} - pk * interval '1 second')"
    name = "('bench-template-' || lpad(pk::text, 7, '0'))"
    _common.insert_select(
        Template,
        {
            "id": "pk",
            "uuid": "u",
            "unique_name": f"{name} || '-' || left(replace(u::text, '-', ''), 16)",
            "name": name,
            "display_text": "'Benchmark template ' || pk",
            "kind": "'TEMPLATE'",
            "format": "(ARRAY['QCOW2', 'RAW'])[pk % 2 + 1]",
            "url": f"'http://images.example.invalid/' || {name} || '.qcow2'",
            "os_type": "'Debian GNU/Linux 12 (64-bit)'",
            "account_id": account,
            "is_public": "pk % 10 NOT IN (3, 7)",  # 20 % private to their (other) accounts
            "is_featured": "pk % 100 = 1",
            "state": "CASE WHEN pk % 20 = 0 THEN 'INACTIVE' ELSE 'ACTIVE' END",
            "created_at": created,
            "updated_at": created,
        },
        "(SELECT pk, gen_random_uuid() AS u FROM generate_series(1, %s) pk) s",
        [n],
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO templates_app_template_zones (template_id, zone_id) "
            "SELECT pk, %s FROM generate_series(1, %s) pk",
            [zone_id, n],
        )
        cursor.execute(
            "INSERT INTO templates_app_templatedetail (template_id, key, value) "
            "SELECT pk, 'rootDiskController', 'virtio' FROM generate_series(1, %s, 4) pk",
            [n],
        )
        # Some private templates of other accounts are shared with the user's account.
        cursor.execute(
            "INSERT INTO templates_app_template_shared_with (template_id, account_id) "
            "SELECT pk, %s FROM generate_series(3, %s, 200) pk",
            [user_account, n],
        )
    # As many VMs as templates, in mixed states, so the reference counts have data to count.
    pk = f"((n::bigint * 7919) % {n} + 1)"  # n * 7919 overflows int4 at 1M
    _common.insert_select(
        VirtualMachine,
        {
            "id": "n",
            "uuid": "gen_random_uuid()",
            "name": "'bench-vm-' || lpad(n::text, 8, '0')",
            "account_id": f"({first} + {pk} % {N_ACCOUNTS})",
            "template_id": pk,
            "zone_id": str(zone_id),
            "state": "(ARRAY['RUNNING', 'STOPPED', 'DESTROYED', 'EXPUNGED'])[n % 4 + 1]",
            "destroyed_at": f"CASE WHEN n % 4 >= 2 THEN {now} END",
            "expunged_at": f"CASE WHEN n % 4 = 3 THEN {now} END",
        },
        "generate_series(1, %s) n",
        [n],
    )
    for table in ("templates_app_template", "agents_app_virtualmachine"):
        _common.reset_sequence(table)
    _common.analyze()

    User = get_user_model()
    User.objects.filter(username="bench-user").delete()
    user = User.objects.create_user(username="bench-user", password=None, is_staff=False)
    Account.objects.get(pk=user_account).members.add(user)
    token = Token.objects.create(user=user)
    visible = (
        Template.objects.filter(state="ACTIVE")
        .filter(is_public=True)
        .union(Template.objects.filter(state="ACTIVE", account_id=user_account))
        .union(Template.objects.filter(state="ACTIVE", shared_with=user_account))
        .count()
    )
    return {"token": token.key, "visible": visible}


def cursors_at(depths: list[int]) -> list[str]:
    """Signed cursors `depth` pages down (what a client following next_cursor would hold)."""
    from django.core import signing

    from templates_app.api.pagination import CURSOR_SALT
    from templates_app.models import Template

    cursors = []
    rows = Template.objects.filter(state="ACTIVE").order_by("-created_at", "-id")
    for depth in depths:
        row = rows.values_list("created_at", "id")[depth * PAGE_SIZE - 1]
        cursors.append(signing.dumps([row[0].isoformat(), row[1]], salt=CURSOR_SALT, compress=True))
    return cursors


def request_paths(cursors: list[str], count: int) -> list[str]:
    """`count` paths: the first page mostly, every DEEP_EVERY-th one a page further down by its
    cursor (page numbers deep down are OFFSET scans: docs/api.md says to follow next_cursor)."""
    paths = []
    for i in range(count):
        path = f"/api/v1/templates/?page_size={PAGE_SIZE}"
        if i % DEEP_EVERY == DEEP_EVERY - 1:
            path += f"&cursor={cursors[(i // DEEP_EVERY) % len(cursors)]}"
        paths.append(path)
    return paths


def raw_sql_ms(queries: list[dict], repeats: int = 15) -> float:
    """Median time of the request's statements run directly, each as the request ran it
    (prepared where it was): the floor an API can reach."""
    from django.db import connection

    from templates_app import statements

    totals = []
    for _ in range(repeats):
        start = time.perf_counter()
        for query in queries:
            with statements._cursor() if query["prepared"] else connection.cursor() as cursor:
                cursor.execute(query["sql"], query["params"])
                cursor.fetchall()
        totals.append((time.perf_counter() - start) * 1000)
    return sorted(totals)[len(totals) // 2]


def in_process_queries(token: str, path: str, explain: bool) -> list[dict]:
    """Run one request through Django in this process and capture its statements: SQL,
    parameters, whether its cursor prepares them, and how long each took."""
    from django.db import connection
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    client.get(path, HTTP_HOST="127.0.0.1")  # warm caches (content types, plans)
    queries: list[dict] = []

    def capture(execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            prepared = type(context["cursor"].cursor).__name__ == "PreparedCursor"
            elapsed = time.perf_counter() - start
            queries.append({"sql": sql, "params": params, "prepared": prepared, "time": elapsed})

    with connection.execute_wrapper(capture):
        response = client.get(path, HTTP_HOST="127.0.0.1")
    assert response.status_code == 200, (response.status_code, response.content[:300])
    if explain:
        slowest = max(queries, key=lambda q: q["time"])
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"], slowest["params"])
            plan = "\n".join(row[0] for row in cursor.fetchall())
        print(f"  EXPLAIN ANALYZE of the slowest statement ({slowest['time'] * 1000:.1f} ms):")
        print("    " + slowest["sql"][:2000])
        print("    " + plan.replace("\n", "\n    "))
    return queries


class KeepAliveClient:
    """One client thread's HTTP/1.1 connection, kept alive between requests as a browser or
    a requests.Session keeps it; reopened once when the server closed it while idle."""

    def __init__(self, port: int, token: str):
        self.port, self.headers = port, {"Authorization": f"Token {token}"}
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, bytes, float]:
        start = time.perf_counter()
        for attempt in (1, 2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
                )
            try:
                self.conn.request("GET", path, headers=self.headers)
                response = self.conn.getresponse()
                body = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused and attempt == 1:
                    start = time.perf_counter()  # the idle connection was gone: time the retry
                    continue
                raise
            if response.will_close:
                self.close()
            return response.status, body, (time.perf_counter() - start) * 1000
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


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
        client = KeepAliveClient(port, token)
        try:
            send(client)
        finally:
            client.close()

    def send(client: KeepAliveClient):
        while True:
            with lock:
                index = next(next_index, None) if time.monotonic() < deadline else None
            if index is None:
                return
            try:
                status, body, ms = client.get(paths[index])
                ok = status == 200 and len(json.loads(body)["results"]) > 0
                error = None if ok else f"{paths[index]}: HTTP {status} {body[:200]!r}"
            except (OSError, ValueError, KeyError) as exc:
                ms, error = None, f"{paths[index]}: {exc!r}"
            with lock:
                if error:
                    failures.append(error)
                else:
                    latencies.append(ms)
                    is_deep = "&cursor=" in paths[index]
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


def sizes() -> list[int]:
    """STENCIL_BENCH_LIST_SIZES (comma-separated), default 10k and 100k; 1000000 adds the 1M
    catalogue (several minutes more to build on 2 shared cores)."""
    raw = os.environ.get("STENCIL_BENCH_LIST_SIZES", "10000,100000")
    return [int(n) for n in raw.split(",") if n.strip()]


def measure(n: int, tmp: str, database_url: str, explain: bool) -> dict:
    from django.db import connections

    start = time.perf_counter()
    fixture = load(str(Path(tmp) / "store"), n)
    print(
        f"\n[{n:,} templates] loaded in {time.perf_counter() - start:.1f} s; "
        f"{fixture['visible']:,} ACTIVE templates visible to the non-staff user "
        f"(load average {_common.load_average()})"
    )
    token = fixture["token"]
    first_page = f"/api/v1/templates/?page_size={PAGE_SIZE}"
    queries = in_process_queries(token, first_page, explain)
    print(f"  queries per request (in-process, {first_page}): {len(queries)}")
    for query in queries:
        sql = " ".join(query["sql"].split())
        how = "prepared" if query["prepared"] else "        "
        print(f"    {query['time'] * 1000:7.1f} ms {how} {sql[:100]}")
    raw_ms = raw_sql_ms(queries)
    print(f"  the same statements run directly: {raw_ms:.1f} ms (median)")
    depths = [d for d in (2, 10, 100, 1000) if d * PAGE_SIZE < fixture["visible"]]
    cursors = cursors_at(depths)
    deep = in_process_queries(token, f"{first_page}&cursor={cursors[-1]}", False)
    print(
        f"  cursor page {depths[-1]}: {len(deep)} queries, "
        f"{sum(q['time'] for q in deep) * 1000:.1f} ms (statements, seen from here)"
    )
    connections.close_all()  # nothing of ours stays open while the server runs

    port = _common.free_port()
    log_path = Path(tmp) / f"gunicorn-{n}.log"
    proc = _common.start_web(port, database_url, log_path)
    try:
        _common.wait_for_web(proc, port, token, "/api/v1/templates/?page_size=1", log_path)
        print(f"  {' '.join(_common.web_command(port)[:9])} (pid {proc.pid}) answers")
        paths = request_paths(cursors, REQUESTS)
        run_clients(port, token, paths[:WARMUP_REQUESTS], CLIENT_THREADS, PHASE_BUDGET["warm-up"])
        sequential = summary(
            "1 client (service time)",
            run_clients(port, token, paths[:SEQUENTIAL_REQUESTS], 1, PHASE_BUDGET["sequential"]),
        )
        cpu_before = _common.process_group_cpu_seconds(proc.pid)
        concurrent_run = run_clients(port, token, paths, CLIENT_THREADS, PHASE_BUDGET["concurrent"])
        served = len(concurrent_run["latencies"]) + len(concurrent_run["failures"])
        cpu_ms = (_common.process_group_cpu_seconds(proc.pid) - cpu_before) * 1000 / max(served, 1)
        concurrent = summary(f"{CLIENT_THREADS} client threads", concurrent_run)
        print(f"    gunicorn CPU per request: {cpu_ms:.1f} ms (user + system, workers)")
    finally:
        _common.stop_web(proc)
    return {
        "n": n,
        "queries": len(queries),
        "raw_ms": raw_ms,
        "sequential": sequential,
        "concurrent": concurrent,
        "server_cpu_ms": cpu_ms,
        "failures": len(concurrent_run["failures"]),
        "load": _common.load_average(),
    }


def main() -> int:
    explain = "--explain" in sys.argv[1:]
    database_url = _common.setup_django()
    print(
        f"Template listing benchmark: sizes {sizes()} templates (as many VMs), {N_ACCOUNTS} "
        f"accounts; database {_common.BENCH_DB_NAME}"
    )
    with tempfile.TemporaryDirectory(prefix="stencil-bench-list-") as tmp:
        runs = [measure(n, tmp, database_url, explain) for n in sizes()]
    rows = []
    smallest = runs[0]
    for run in runs:
        k = f"{run['n'] // 1000}k"
        rows.append(
            {
                "figure": f"listing p95, {CLIENT_THREADS} clients, {k}",
                "value": run["concurrent"]["p95"],
                "unit": "ms",
                "reference": f"1 client p95 {run['sequential']['p95']:.1f} ms",
                "target": f"< {TARGET_P95_MS:.0f} ms" if run["n"] == 100_000 else "-",
                "met": run["concurrent"]["p95"] < TARGET_P95_MS if run["n"] == 100_000 else None,
            }
        )
        rows.append(
            {
                "figure": f"listing API p50 / raw SQL, {k}",
                "value": run["sequential"]["p50"],
                "unit": "ms",
                "reference": f"raw SQL {run['raw_ms']:.1f} ms",
                "ratio": run["sequential"]["p50"] / run["raw_ms"],
                "target": "-",
                "met": None,
            }
        )
        rows.append(
            {
                "figure": f"listing gunicorn CPU per request, {k}",
                "value": run["server_cpu_ms"],
                "unit": "ms",
                "reference": "~10 ms all-in for p95 < 50 ms at 8 clients on 2 cores",
                "target": "-",
                "met": None,
            }
        )
        rows.append(
            {
                "figure": f"listing queries per request, {k}",
                "value": float(run["queries"]),
                "unit": "q",
                "target": f"<= {TARGET_QUERIES}",
                "met": run["queries"] <= TARGET_QUERIES,
            }
        )
        if run is not smallest:
            ratio = run["concurrent"]["p95"] / smallest["concurrent"]["p95"]
            rows.append(
                {
                    "figure": f"listing p95 growth, {k} vs {smallest['n'] // 1000}k",
                    "value": run["concurrent"]["p95"],
                    "unit": "ms",
                    "reference": f"{smallest['concurrent']['p95']:.1f} ms",
                    "ratio": ratio,
                    "target": "<= 1.5x",
                    "met": ratio <= 1.5,
                }
            )
    _common.report("list_templates", rows)
    return 1 if any(run["failures"] for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
