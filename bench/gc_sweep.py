"""Benchmark: the GC sweep over 100,000 templates and 300,000 VMs (database stencil_bench).

Run from the repository root (`make bench`):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/gc_sweep.py

Whatever database DATABASE_URL names, this script uses `stencil_bench` (created and migrated
here). The data is truncated and reloaded before every sweep, so reruns are reproducible.
"""

import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common  # noqa: E402

N_TEMPLATES = 100_000
N_VMS = 300_000
N_ACCOUNTS = 100
TARGET_SECONDS = 10.0
TARGET_TEXT = "target: < 10 s; queries grow with batches, not templates"

# INACTIVE templates (every third one) fall into four groups by (pk // 3) % 4.
EXPUNGED_ONLY, DESTROYED, LIVE, UNUSED = range(4)
GROUP_VMS = {
    EXPUNGED_ONLY: ["EXPUNGED", "EXPUNGED", "EXPUNGED"],
    DESTROYED: ["DESTROYED", "EXPUNGED", "EXPUNGED"],
    LIVE: ["RUNNING", "STOPPED", "EXPUNGED"],
    UNUSED: [],
}
ACTIVE_VM_STATES = ["RUNNING", "STOPPED", "DESTROYED", "EXPUNGED", "STARTING"]


def is_inactive(pk: int) -> bool:
    return pk % 3 == 0


def group_of(pk: int) -> int:
    return (pk // 3) % 4


def load(store_path: str, n_templates: int = N_TEMPLATES) -> dict:
    """Truncate and build the fixture in SQL (generate_series). Returns the expected outcome."""
    from django.db import connection

    from agents_app.models import VirtualMachine
    from templates_app.models import Template, TemplateStoreRef

    _common.truncate_app_tables()
    zone_id, store_id, account_ids = _common.make_zone_store_accounts(
        accounts=N_ACCOUNTS, store_path=store_path
    )
    first_account = account_ids[0]
    assert account_ids == list(range(first_account, first_account + N_ACCOUNTS))
    account = f"({first_account} + pk % {N_ACCOUNTS})"
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
            "is_public": "pk % 5 <> 0",
            "state": "CASE WHEN pk % 3 = 0 THEN 'INACTIVE' ELSE 'ACTIVE' END",
            "created_at": created,
            "updated_at": created,
        },
        "(SELECT pk, gen_random_uuid() AS u FROM generate_series(1, %s) pk) s",
        [n_templates],
    )
    size = _common.COPY_BYTES
    _common.insert_select(
        TemplateStoreRef,
        {
            "template_id": "pk",
            "store_id": str(store_id),
            "download_state": "'DOWNLOADED'",
            "state": "'READY'",
            "download_percent": "100",
            "downloaded_bytes": str(size),
            "size": str(size),
            "physical_size": str(size),
            "charged_bytes": str(size),
            "install_path": "''",
        },
        "generate_series(1, %s) pk",
        [n_templates],
    )
    # VMs: the INACTIVE templates get their group's states; the rest cycle through the
    # ACTIVE templates (k-th ACTIVE pk = k + k / 2 + 1), spread, not clustered.
    n_vms = 3 * n_templates
    group_states = (
        "ARRAY["
        + ", ".join(
            "ARRAY[" + ", ".join(f"'{s}'" for s in (GROUP_VMS[g] + ["-"] * 3)[:3]) + "]"
            for g in range(4)
        )
        + "]"
    )
    n_active = n_templates - n_templates // 3
    vm_exprs = {
        "uuid": "gen_random_uuid()",
        "name": "'bench-vm-' || lpad(n::text, 8, '0')",
        "account_id": account,
        "template_id": "pk",
        "zone_id": str(zone_id),
        "state": "st",
        "destroyed_at": f"CASE WHEN st IN ('DESTROYED', 'EXPUNGED') THEN {now} END",
        "expunged_at": f"CASE WHEN st = 'EXPUNGED' THEN {now} END",
    }
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_vm")
        cursor.execute("CREATE TEMP TABLE bench_vm (n bigserial, pk bigint, st text)")
        cursor.execute(
            f"""
            INSERT INTO bench_vm (pk, st)
            SELECT pk, st FROM (
              SELECT pk, ({group_states})[(pk / 3) %% 4 + 1][i] AS st
              FROM generate_series(3, %s, 3) pk, generate_series(1, 3) i
              ORDER BY pk, i
            ) g WHERE st <> '-'
            """,
            [n_templates],
        )
        inactive_vms = cursor.rowcount
        states = "ARRAY[" + ", ".join(f"'{s}'" for s in ACTIVE_VM_STATES) + "]"
        cursor.execute(
            f"""
            INSERT INTO bench_vm (pk, st)
            SELECT k + k / 2 + 1, ({states})[j %% {len(ACTIVE_VM_STATES)} + 1]
            FROM (SELECT j, (j::bigint * 7919) %% {n_active} AS k FROM generate_series(0, %s) j) s
            ORDER BY j
            """,
            [n_vms - inactive_vms - 1],
        )
        loaded_vms = _common.insert_select(VirtualMachine, {"id": "n", **vm_exprs}, "bench_vm")
        cursor.execute("DROP TABLE bench_vm")
    assert loaded_vms == n_vms, loaded_vms
    for table in ("templates_app_template", "agents_app_virtualmachine"):
        _common.reset_sequence(table)
    with connection.cursor() as cursor:
        # Accounts are charged for their copies, as registration and downloads would do.
        cursor.execute(
            """
            UPDATE templates_app_account a SET
              used_templates = c.active, used_secondary_bytes = c.copies * %s
            FROM (
              SELECT t.account_id,
                     COUNT(*) FILTER (WHERE t.state = 'ACTIVE') AS active,
                     COUNT(*) AS copies
              FROM templates_app_template t
              JOIN templates_app_templatestoreref r ON r.template_id = t.id
              GROUP BY t.account_id
            ) c
            WHERE a.id = c.account_id
            """,
            [_common.COPY_BYTES],
        )
    _common.analyze()

    inactive = range(3, n_templates + 1, 3)
    groups = Counter(group_of(pk) for pk in inactive)
    return {
        "inactive": len(inactive),
        "groups": groups,
        "removable": groups[EXPUNGED_ONLY] + groups[UNUSED],
        "held": groups[DESTROYED] + groups[LIVE],
        "active": n_templates - len(inactive),
    }


def run_sweep(batch_size: int | None) -> dict:
    """Time one gc_sweep() and count its statements by kind."""
    from django.db import connection

    from templates_app import services

    kinds: Counter = Counter()
    seconds: Counter = Counter()

    def wrapper(execute, sql, params, many, context):
        head = " ".join(sql.split()[:1]).upper()
        table = re.search(r'(?:FROM|UPDATE|INTO)\s+"?(\w+)"?', sql)
        kind = f"{head} {table.group(1) if table else ''}".strip()
        kinds[kind] += 1
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            seconds[kind] += time.perf_counter() - start

    with connection.execute_wrapper(wrapper):
        start = time.perf_counter()
        result = services.gc_sweep(batch_size=batch_size, actor_label="bench")
        wall = time.perf_counter() - start
    return {
        "result": result,
        "wall": wall,
        "queries": sum(kinds.values()),
        "kinds": kinds,
        "seconds": seconds,
    }


def verify(expected: dict, result) -> list[str]:
    """Check the sweep's outcome in SQL. Returns the failures (empty when correct)."""
    from django.db import connection

    failures = []

    def scalar(sql: str, params=None) -> int:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]

    live = (
        "EXISTS (SELECT 1 FROM agents_app_virtualmachine v "
        "WHERE v.template_id = t.id AND v.state <> 'EXPUNGED')"
    )
    unsafe = scalar(
        f"SELECT COUNT(*) FROM templates_app_template t WHERE t.state = 'REMOVED' AND {live}"
    )
    if unsafe:
        failures.append(f"{unsafe} REMOVED templates still have a non-EXPUNGED VM")
    missed = scalar(
        f"SELECT COUNT(*) FROM templates_app_template t WHERE t.state = 'INACTIVE' AND NOT {live}"
    )
    if missed:
        failures.append(f"{missed} INACTIVE templates without a live reference were not removed")
    states = dict(
        _rows("SELECT state, COUNT(*) FROM templates_app_template GROUP BY state", connection)
    )
    if states.get("REMOVED", 0) != expected["removable"]:
        failures.append(f"REMOVED {states.get('REMOVED', 0)} != expected {expected['removable']}")
    if states.get("INACTIVE", 0) != expected["held"]:
        failures.append(f"INACTIVE {states.get('INACTIVE', 0)} != expected {expected['held']}")
    if states.get("ACTIVE", 0) != expected["active"]:
        failures.append(f"ACTIVE {states.get('ACTIVE', 0)} != expected {expected['active']}")
    if result.removed_count != expected["removable"] or result.held_count != expected["held"]:
        failures.append(
            f"sweep reported removed={result.removed_count} held={result.held_count}, "
            f"expected {expected['removable']}/{expected['held']}"
        )
    copies_left = scalar(
        "SELECT COUNT(*) FROM templates_app_templatestoreref r "
        "JOIN templates_app_template t ON t.id = r.template_id "
        "WHERE t.state = 'REMOVED' AND r.state <> 'DESTROYED'"
    )
    if copies_left or result.copies_destroyed != expected["removable"]:
        failures.append(
            f"copies: {copies_left} of removed templates not DESTROYED, "
            f"{result.copies_destroyed} destroyed (expected {expected['removable']})"
        )
    events = scalar("SELECT COUNT(*) FROM templates_app_event WHERE to_state = 'REMOVED'")
    if events != expected["removable"]:
        failures.append(f"{events} REMOVED events, expected {expected['removable']}")
    wrong_bytes = scalar(
        """
        SELECT COUNT(*) FROM templates_app_account a WHERE a.used_secondary_bytes <> %s * (
          SELECT COUNT(*) FROM templates_app_templatestoreref r
          JOIN templates_app_template t ON t.id = r.template_id
          WHERE t.account_id = a.id AND t.state <> 'REMOVED')
        """,
        [_common.COPY_BYTES],
    )
    if wrong_bytes:
        failures.append(f"{wrong_bytes} accounts have wrong used_secondary_bytes")
    return failures


def _rows(sql: str, connection) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def sizes() -> list[int]:
    """STENCIL_BENCH_GC_SIZES (comma-separated), default 10k and 100k; add 1000000 for 1M
    (about two more minutes to build and sweep on 2 cores)."""
    raw = os.environ.get("STENCIL_BENCH_GC_SIZES", "10000,100000")
    return [int(n) for n in raw.split(",") if n.strip()]


def main() -> int:
    _common.setup_django()
    from django.conf import settings

    batch_size = settings.STENCIL_GC_BATCH_SIZE
    print(
        f"GC sweep benchmark: sizes {sizes()} templates (a third INACTIVE), 3 VMs per template, "
        f"{N_ACCOUNTS} accounts, one copy per template; batch {batch_size}; "
        f"database {_common.BENCH_DB_NAME}"
    )
    runs = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="stencil-bench-store-") as store_path:
        for n in sizes():
            print(f"\n[{n:,} templates] loading fixture (load average {_common.load_average()})")
            start = time.perf_counter()
            expected = load(store_path, n)
            print(
                f"  loaded in {time.perf_counter() - start:.1f} s: {expected['inactive']:,} "
                f"INACTIVE = {expected['groups'][EXPUNGED_ONLY]:,} only EXPUNGED VMs + "
                f"{expected['groups'][UNUSED]:,} no VM (removable) + "
                f"{expected['groups'][DESTROYED]:,} a DESTROYED VM + "
                f"{expected['groups'][LIVE]:,} RUNNING/STOPPED VMs (held)"
            )
            run = run_sweep(batch_size)
            result = run["result"]
            print(
                f"  gc_sweep(): {run['wall']:.2f} s wall, {run['queries']} queries, "
                f"{result.batches} batches, removed {result.removed_count:,}, "
                f"held {result.held_count:,}, copies destroyed {result.copies_destroyed:,} "
                f"(load average {_common.load_average()})"
            )
            print("  queries by kind (count, seconds in the database driver):")
            for kind, seconds in run["seconds"].most_common():
                print(f"    {kind:<40} {run['kinds'][kind]:>5} {seconds:>7.2f} s")
            failures = verify(expected, result)
            if failures:
                failed = True
                for failure in failures:
                    print(f"  INCORRECT: {failure}")
            else:
                print(
                    "  correct: no REMOVED template has a non-EXPUNGED VM; every INACTIVE "
                    "template without a live reference is REMOVED; copies, events, bytes agree"
                )
            runs.append((n, run))

    print("\nsummary")
    print(
        f"  {'templates':>10} {'batches':>8} {'queries':>8} {'q/batch':>8} {'wall s':>8} "
        f"{'us/removed':>10}"
    )
    rows = []
    smallest_n, smallest = runs[0]
    base_per = smallest["wall"] / max(smallest["result"].removed_count, 1)
    for n, run in runs:
        batches = run["result"].batches
        per = run["wall"] / max(run["result"].removed_count, 1)
        print(
            f"  {n:>10} {batches:>8} {run['queries']:>8} "
            f"{run['queries'] / max(batches, 1):>8.1f} {run['wall']:>8.2f} {per * 1e6:>10.1f}"
        )
        if n == 100_000:
            rows.append(
                {
                    "figure": "GC sweep wall, 100k templates",
                    "value": run["wall"],
                    "unit": "s",
                    "target": "< 10 s",
                    "met": run["wall"] < TARGET_SECONDS,
                }
            )
        if n != smallest_n:
            rows.append(
                {
                    "figure": f"GC per removed template, {n // 1000}k vs {smallest_n // 1000}k",
                    "value": per * 1e6,
                    "unit": "us",
                    "reference": f"{base_per * 1e6:.1f} us at {smallest_n // 1000}k",
                    "ratio": per / base_per,
                    "target": "<= 1.5x",
                    "met": per / base_per <= 1.5,
                }
            )
        # Fixed statements per batch plus the final held/destroy reads: a few per batch.
        rows.append(
            {
                "figure": f"GC queries per batch, {n // 1000}k",
                "value": run["queries"] / max(batches, 1),
                "unit": "q",
                "target": "flat (batches, not templates)",
                "met": None,
            }
        )
    rows.append(
        {
            "figure": "GC sweep correct",
            "value": 0.0 if failed else 1.0,
            "target": "every check",
            "met": not failed,
        }
    )
    _common.report("gc_sweep", rows)
    print(f"  correctness: {'FAILED' if failed else 'OK'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
