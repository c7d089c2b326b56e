"""Shared setup of the benchmarks: their own database, Django, fast fixture loading.

Every benchmark runs against the PostgreSQL database `stencil_bench`, whatever database
DATABASE_URL names (the Makefile passes the tests' one): the name is swapped before Django
reads its settings, so a benchmark never touches the tests' data.
"""

import itertools
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
# STENCIL_BENCH_DB lets parallel checkouts keep their own scratch database.
BENCH_DB_NAME = os.environ.get("STENCIL_BENCH_DB", "stencil_bench")
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/stencil"
# A fixed instant, so that reruns load identical rows.
FIXTURE_NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

# Catalogue tables a benchmark owns in stencil_bench (CASCADE takes what points at them).
APP_TABLES = [
    "agents_app_virtualmachine",
    "templates_app_event",
    "templates_app_templatestoreref",
    "templates_app_templatedetail",
    "templates_app_template_zones",
    "templates_app_template_shared_with",
    "templates_app_template",
    "templates_app_imagestore",
    "templates_app_account_members",
    "templates_app_account",
    "templates_app_zone",
]


def bench_database_url(url: str | None = None) -> str:
    """DATABASE_URL with its database name replaced by stencil_bench (PostgreSQL only)."""
    parts = urlsplit(url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        sys.exit(f"benchmarks need PostgreSQL; DATABASE_URL is {parts.scheme}://…")
    return urlunsplit(parts._replace(path=f"/{BENCH_DB_NAME}"))


def ensure_database(url: str, *, recreate: bool = False) -> None:
    """Create stencil_bench if it does not exist (through the `postgres` maintenance database)."""
    import psycopg

    maintenance = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        if recreate:
            conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB_NAME}"')
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB_NAME]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{BENCH_DB_NAME}"')
            print(f"created database {BENCH_DB_NAME}")


def setup_django() -> str:
    """Point DATABASE_URL at stencil_bench, create and migrate it, set Django up.

    Returns the benchmark database URL (for subprocesses such as gunicorn).
    """
    url = bench_database_url()
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("STENCIL_ENV", "development")  # benchmarks run with the dev key
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    os.chdir(REPO_ROOT)
    ensure_database(url)

    import django

    django.setup()

    from django.conf import settings
    from django.core.management import call_command
    from django.db import DatabaseError, connections

    assert settings.DATABASES["default"]["NAME"] == BENCH_DB_NAME, settings.DATABASES["default"]
    try:
        call_command("migrate", verbosity=0, interactive=False)
    except DatabaseError as exc:
        # The schema of this scratch database no longer matches the migrations (one was
        # edited or renamed since the last run): start it over. It only ever holds fixtures.
        print(f"migrate failed ({str(exc).strip()}); recreating {BENCH_DB_NAME}")
        connections.close_all()
        ensure_database(url, recreate=True)
        call_command("migrate", verbosity=0, interactive=False)
    return url


def truncate_app_tables() -> None:
    """Empty the catalogue tables of stencil_bench so that every run starts from the same data."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY CASCADE")


def copy_rows(table: str, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """COPY rows into a table through psycopg (protected FSM fields are plain columns here)."""
    from django.db import connection

    count = 0
    with connection.cursor() as cursor:
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with cursor.cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    return count


def reset_sequence(table: str) -> None:
    """After COPY with explicit ids, move the id sequence past them."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"COALESCE((SELECT MAX(id) FROM {table}), 1))"
        )


def analyze(tables: Iterable[str] = APP_TABLES) -> None:
    """Fresh planner statistics (and visibility maps) after a bulk load, as autovacuum would."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}")


def det_uuid(namespace: int, n: int) -> uuid.UUID:
    """A reproducible, unique UUID per (namespace, n)."""
    return uuid.UUID(int=(namespace << 96) | n, version=4)


def make_zone_store_accounts(*, accounts: int, store_path: str) -> tuple[int, int, list[int]]:
    """One zone, one image store (UP) at store_path, `accounts` accounts. Returns their ids."""
    from templates_app.models import Account, ImageStore, Zone

    zone = Zone.objects.create(name="bench-zone", description="benchmark zone")
    store = ImageStore.objects.create(zone=zone, name="bench-store", path=store_path)
    created = Account.objects.bulk_create(
        [Account(name=f"bench-account-{i:03d}") for i in range(accounts)]
    )
    return zone.pk, store.pk, [account.pk for account in created]


def copy_model_rows(model, rows: Iterable[dict]) -> int:
    """COPY rows (dicts keyed by attname, e.g. account_id) into a model's table.

    Columns a row leaves out take the model field's default, so fixtures survive new columns
    that other changes add; auto_now(_add) timestamps default to FIXTURE_NOW.
    """
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return 0
    pk_name = model._meta.pk.attname
    # The id comes from its sequence unless the rows give it.
    fields = [f for f in model._meta.concrete_fields if f.attname != pk_name or pk_name in first]

    def fallback(field):
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            return lambda: FIXTURE_NOW
        if field.has_default() and callable(field.default):
            return field.get_default
        value = field.get_default()
        return lambda: value

    fallbacks = {field.attname: fallback(field) for field in fields}
    attnames = [field.attname for field in fields]

    def tuples():
        for row in itertools.chain([first], rows):
            yield tuple(row[name] if name in row else fallbacks[name]() for name in attnames)

    return copy_rows(model._meta.db_table, [field.column for field in fields], tuples())


def template_row(
    pk: int, *, account_id: int, state: str, is_public: bool, is_featured: bool = False
) -> dict:
    """One Template row (created 1 s apart, newest first by id)."""
    template_uuid = det_uuid(1, pk)
    name = f"bench-template-{pk:06d}"
    created = FIXTURE_NOW - timedelta(seconds=pk)
    return {
        "id": pk,
        "uuid": template_uuid,
        "unique_name": f"{name}-{template_uuid.hex[:16]}",
        "name": name,
        "display_text": f"Benchmark template {pk}",
        "kind": "TEMPLATE",
        "format": ("QCOW2", "RAW")[pk % 2],
        "url": f"http://images.example.invalid/{name}.qcow2",
        "os_type": "Debian GNU/Linux 12 (64-bit)",
        "account_id": account_id,
        "is_public": is_public,
        "is_featured": is_featured,
        "state": state,
        "created_at": created,
        "updated_at": created,
    }


COPY_BYTES = 1 << 30  # every fixture copy is 1 GiB, charged to its account


def store_ref_row(template_id: int, store_id: int) -> dict:
    """A READY, downloaded copy of 1 GiB; install_path empty (no file to delete)."""
    return {
        "template_id": template_id,
        "store_id": store_id,
        "download_state": "DOWNLOADED",
        "state": "READY",
        "download_percent": 100,
        "downloaded_bytes": COPY_BYTES,
        "size": COPY_BYTES,
        "physical_size": COPY_BYTES,
        "charged_bytes": COPY_BYTES,  # ignored if the model has no such field
        "install_path": "",
    }


def vm_row(pk: int, *, template_id: int, account_id: int, zone_id: int, state: str) -> dict:
    gone = state in ("DESTROYED", "EXPUNGED")
    return {
        "id": pk,
        "uuid": det_uuid(2, pk),
        "name": f"bench-vm-{pk:06d}",
        "account_id": account_id,
        "template_id": template_id,
        "zone_id": zone_id,
        "state": state,
        "destroyed_at": FIXTURE_NOW if gone else None,
        "expunged_at": FIXTURE_NOW if state == "EXPUNGED" else None,
    }


def insert_select(model, exprs: dict[str, str], from_sql: str, params: Sequence = ()) -> int:
    """INSERT INTO model's table SELECT … FROM from_sql: the whole fixture stays in the server.

    `exprs` maps attnames to SQL expressions (over from_sql's columns, e.g. generate_series);
    every other column takes the model field's default as a constant (auto_now ones
    FIXTURE_NOW, UUIDs gen_random_uuid()), so fixtures survive new columns. Millions of rows
    load in seconds this way, where COPY from Python rows takes minutes.
    """
    from django.db import connection, models

    columns, selects, values = [], [], []
    for field in model._meta.concrete_fields:
        columns.append(field.column)
        if field.attname in exprs:
            selects.append(exprs[field.attname].replace("%", "%%"))  # literal SQL
            continue
        if field.primary_key:
            columns.pop()
            continue
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            value = FIXTURE_NOW
        elif isinstance(field, models.UUIDField) and callable(field.default):
            selects.append("gen_random_uuid()")
            continue
        else:
            value = field.get_default()
        selects.append("%s")
        values.append(field.get_db_prep_save(value, connection))
    sql = (
        f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
        f"SELECT {', '.join(selects)} FROM {from_sql}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, *params])
        return cursor.rowcount


RESULT_PREFIX = "BENCH_RESULT "


def load_average() -> str:
    """The 1/5/15-minute load averages, printed beside every figure (the cores are shared)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def report(bench: str, rows: list[dict]) -> None:
    """Print one machine-readable line for bench/run_all.py, and a readable table.

    Each row: figure (what), value, unit, reference (what the value is compared with, same
    run) and reference_value, ratio, target (text), met (bool or None when informative).
    """
    import json

    load = load_average()
    print(f"\n{bench}: results (load average {load})")
    for row in rows:
        met = row.get("met")
        verdict = "met" if met else ("missed" if met is not None else "-")
        ratio = row.get("ratio")
        print(
            f"  {row['figure']:<48} {row['value']:>10.4g} {row.get('unit', ''):<6}"
            f" ref {row.get('reference', '-')}"
            f"{'' if ratio is None else f' ratio {ratio:.2f}'}  target {row.get('target', '-')}"
            f"  {verdict}"
        )
    print(RESULT_PREFIX + json.dumps({"bench": bench, "load": load, "rows": rows}))


# Real agents (manage.py run_agent) for the benchmarks that deploy through a broker -----------

AGENT_START_SECONDS = 60


def purge_host_queue(name: str) -> int:
    """Drop the messages left on host.<name> by earlier runs (a run stopped half way leaves
    deploys of VMs that the truncate removed): an agent must start on an empty queue."""
    from project.celery import app

    with app.connection_for_write() as conn:
        return conn.default_channel.queue_purge(f"host.{name}") or 0


def start_agent(
    name: str, zone: str, uri: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `manage.py run_agent` for host `name` (its own process group) on an emptied queue,
    and return once its worker answers a ping. Its output goes to `log`."""
    import socket
    import time

    from project.celery import app

    purged = purge_host_queue(name)
    if purged:
        print(f"  purged {purged} stale message(s) from host.{name}")
    env = {
        **os.environ,
        "STENCIL_URL_ALLOW_LOOPBACK": "true",
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "run_agent", "--name", name, "--zone", zone]
            + ["--libvirt-uri", uri, "--loglevel", "WARNING"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = f"agent-{name}@{socket.gethostname()}"
    deadline = time.monotonic() + AGENT_START_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        if app.control.ping(destination=[worker], timeout=0.5):
            return proc
    stop_agent(proc)
    raise RuntimeError(f"the agent did not start:\n{log.read_text(errors='replace')[-2000:]}")


def stop_agent(proc: subprocess.Popen) -> None:
    """SIGTERM the agent's process group (its qemu-img children too); SIGKILL after 15 s."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class StateWatcher:
    """One thread that polls the database for VMs leaving STARTING, for every client at once
    (one poller per client made 8 clients cost 800 queries a second beside the deploys).

    `watch(uuid)` before the VM can leave STARTING, then `wait(uuid, timeout)` returns
    (state, perf_counter() when it was seen out of STARTING)."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.lock = threading.Lock()
        self.pending: dict[str, threading.Event] = {}
        self.seen: dict[str, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="state-watcher")

    def __enter__(self) -> "StateWatcher":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()

    def watch(self, vm_uuid) -> None:
        with self.lock:
            self.pending[str(vm_uuid)] = threading.Event()

    def wait(self, vm_uuid, timeout: float) -> tuple[str, float] | None:
        key = str(vm_uuid)
        with self.lock:
            event = self.pending.get(key)
        if event is None or not event.wait(timeout):
            return None
        with self.lock:
            del self.pending[key]
            return self.seen.pop(key)

    def _run(self) -> None:
        import time

        from django.db import connection

        from agents_app.models import VirtualMachine

        try:
            while not self.stop.wait(self.interval):
                with self.lock:
                    keys = [k for k, e in self.pending.items() if not e.is_set()]
                if not keys:
                    continue
                done = (
                    VirtualMachine.objects.filter(uuid__in=keys)
                    .exclude(state="STARTING")
                    .values_list("uuid", "state")
                )
                now = time.perf_counter()
                with self.lock:
                    for vm_uuid, state in done:
                        key = str(vm_uuid)
                        self.seen[key] = (state, now)
                        self.pending[key].set()
        finally:
            connection.close()


def process_group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in a process group (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        # after the command: state ppid pgrp session … utime(12) stime(13)
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


# The production web server (the Procfile's gunicorn line, what `make run` serves) -------------

WEB_START_SECONDS = 30.0


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def web_command(port: int) -> list[str]:
    """The Procfile's `web` line (what `make run` serves), on `port`."""
    import shlex

    procfile = (REPO_ROOT / "Procfile").read_text()
    line = next(row for row in procfile.splitlines() if row.startswith("web:"))
    command = shlex.split(line.removeprefix("web:").replace("${STENCIL_PORT:-8000}", str(port)))
    if not (REPO_ROOT / command[0]).exists():
        command[0] = str(Path(sys.executable).parent / "gunicorn")
    return command


def start_web(port: int, database_url: str, log_path: Path) -> subprocess.Popen:
    """gunicorn as the Procfile runs it, in its own process group, with kept database
    connections as docs/deployment.md's production environment keeps them."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "60",
        "LOG_LEVEL": "WARNING",
    }
    env.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    env.setdefault("STENCIL_ENV", "development")
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            web_command(port),
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one at the end
        )


def stop_web(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is not None:
        return
    proc.terminate()  # gunicorn's master stops its workers on SIGTERM
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_for_web(proc: subprocess.Popen, port: int, token: str, path: str, log_path: Path) -> None:
    """Until GET `path` with the token answers 200 (RuntimeError with the log's tail if not)."""
    import http.client
    import time

    deadline = time.monotonic() + WEB_START_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path, headers={"Authorization": f"Token {token}"})
            response = conn.getresponse()
            body = response.read()
            if response.status == 200:
                return
            raise RuntimeError(f"server answered {response.status}: {body[:300]!r}")
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    log = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"gunicorn did not answer within {WEB_START_SECONDS:.0f} s:\n{log}")
