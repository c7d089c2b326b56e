"""Benchmark: the GC sweep over 100,000 templates and 300,000 VMs (database stencil_bench).

Run from the repository root (`make bench`):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/gc_sweep.py

Whatever database DATABASE_URL names, this script uses `stencil_bench` (created and migrated
here). The data is truncated and reloaded before every sweep, so reruns are reproducible.
"""

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


def load(store_path: str) -> dict:
    """Truncate and COPY the fixture. Returns the expected outcome of a sweep."""
    from django.db import connection

    from agents_app.models import VirtualMachine
    from templates_app.models import Template, TemplateStoreRef

    _common.truncate_app_tables()
    zone_id, store_id, account_ids = _common.make_zone_store_accounts(
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
                state="INACTIVE" if is_inactive(pk) else "ACTIVE",
                is_public=pk % 5 != 0,
            )
            for pk in range(1, N_TEMPLATES + 1)
        ),
    )
    _common.copy_model_rows(
        TemplateStoreRef,
        (_common.store_ref_row(pk, store_id) for pk in range(1, N_TEMPLATES + 1)),
    )

    def vms():
        vm_id = 0
        for pk in range(3, N_TEMPLATES + 1, 3):
            for state in GROUP_VMS[group_of(pk)]:
                vm_id += 1
                yield _common.vm_row(
                    vm_id, template_id=pk, account_id=account_of(pk), zone_id=zone_id, state=state
                )
        active = [pk for pk in range(1, N_TEMPLATES + 1) if not is_inactive(pk)]
        for j in range(N_VMS - vm_id):
            vm_id += 1
            pk = active[(j * 7919) % len(active)]  # spread, not clustered
            yield _common.vm_row(
                vm_id,
                template_id=pk,
                account_id=account_of(pk),
                zone_id=zone_id,
                state=ACTIVE_VM_STATES[j % len(ACTIVE_VM_STATES)],
            )

    loaded_vms = _common.copy_model_rows(VirtualMachine, vms())
    assert loaded_vms == N_VMS, loaded_vms
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

    inactive = [pk for pk in range(1, N_TEMPLATES + 1) if is_inactive(pk)]
    groups = Counter(group_of(pk) for pk in inactive)
    return {
        "inactive": len(inactive),
        "groups": groups,
        "removable": groups[EXPUNGED_ONLY] + groups[UNUSED],
        "held": groups[DESTROYED] + groups[LIVE],
        "active": N_TEMPLATES - len(inactive),
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


def main() -> int:
    _common.setup_django()
    from django.conf import settings

    default_batch = settings.STENCIL_GC_BATCH_SIZE
    print(
        f"GC sweep benchmark: {N_TEMPLATES:,} templates (a third INACTIVE), {N_VMS:,} VMs, "
        f"{N_ACCOUNTS} accounts, one copy per template; database {_common.BENCH_DB_NAME}"
    )
    runs = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="stencil-bench-store-") as store_path:
        for batch_size in (default_batch, 500, 2000):
            print(f"\n[batch_size={batch_size}] loading fixture")
            start = time.perf_counter()
            expected = load(store_path)
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
                f"held {result.held_count:,}, copies destroyed {result.copies_destroyed:,}"
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
            runs.append((batch_size, run))

    print("\nsummary")
    print(f"  {'batch_size':>10} {'batches':>8} {'queries':>8} {'q/batch':>8} {'wall s':>8}")
    for batch_size, run in runs:
        batches = run["result"].batches
        print(
            f"  {batch_size:>10} {batches:>8} {run['queries']:>8} "
            f"{run['queries'] / max(batches, 1):>8.1f} {run['wall']:>8.2f}"
        )
    first = runs[0][1]
    print(f"  {TARGET_TEXT}")
    time_ok = all(run["wall"] < TARGET_SECONDS for _, run in runs)
    print(
        f"  wall time: {'MET' if time_ok else 'MISSED'} "
        f"(default batch {first['wall']:.2f} s, worst {max(r['wall'] for _, r in runs):.2f} s)"
    )
    print(f"  correctness: {'FAILED' if failed else 'OK'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
