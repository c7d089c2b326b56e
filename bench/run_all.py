"""Run every benchmark (`make bench`); print one table: figure, reference, ratio, target, verdict.

Each benchmark runs as its own process with its output shown as it comes; its last
`BENCH_RESULT {json}` line (bench/_common.report) feeds the table. A benchmark that fails or
overruns its time limit shows as such and the others still run. The whole run is meant to fit
in 20 minutes on 2 cores; the load average is printed with each benchmark's figures because
the cores may be shared.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stencil .venv/bin/python bench/run_all.py
    .venv/bin/python bench/run_all.py gc_sweep list_templates   # a subset, by name
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._common import RESULT_PREFIX, load_average  # noqa: E402

# (name, arguments, time limit in seconds). Sizes are chosen to fit the 20 minutes; the
# scripts take larger ones by their own options / environment variables (docs/benchmarks.md).
BENCHES = [  # the limits add up to 20 minutes: one past its limit is stopped, shown so
    ("gc_sweep", ["gc_sweep.py"], 120),
    ("list_templates", ["list_templates.py"], 200),
    # The downloads skip the curl-then-sha256sum reference (no target; half their time).
    (
        "download",
        ["download.py", "--sizes", "1,4", "--no-phases", "--no-sha256sum"] + ["--budget", "200"],
        260,
    ),
    (
        "direct_download_0.25g",
        ["direct_download.py", "--size", "0.25", "--no-sha256sum"] + ["--budget", "40"],
        60,
    ),
    (
        "direct_download_1g",
        ["direct_download.py", "--size", "1", "--no-sha256sum"] + ["--budget", "70"],
        100,
    ),
    (
        "direct_download_4g",
        ["direct_download.py", "--size", "4", "--no-sha256sum"] + ["--budget", "150"],
        210,
    ),
    ("deploy_storm", ["deploy_storm.py"], 100),
    ("deploy_latency", ["deploy_latency.py"], 100),
    ("fleet", ["fleet.py"], 170),
]


def run(name: str, args: list[str], limit: float) -> tuple[list[dict], str]:
    """Run one benchmark; its result rows and how it ended."""
    command = [sys.executable, str(BENCH_DIR / args[0]), *args[1:]]
    print(f"\n===== {name}: {' '.join(args)} (limit {limit:.0f} s, load {load_average()})")
    start = time.monotonic()
    rows: list[dict] = []
    proc = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    status = "ok"
    expired = threading.Event()

    def watchdog() -> None:  # also when the benchmark prints nothing for a long time
        if proc.poll() is None:
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    timer = threading.Timer(limit, watchdog)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            if line.startswith(RESULT_PREFIX):
                rows = json.loads(line[len(RESULT_PREFIX) :])["rows"]
            if time.monotonic() - start > limit:
                status = f"stopped after {limit:.0f} s"
                break
    finally:
        timer.cancel()
        if expired.is_set():
            status = f"stopped after {limit:.0f} s"
        if proc.poll() is None:
            if status == "ok":
                proc.wait(timeout=max(limit - (time.monotonic() - start), 1))
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    if status == "ok" and proc.returncode:
        status = f"exit {proc.returncode}"
    print(f"===== {name}: {status} in {time.monotonic() - start:.0f} s")
    return rows, status


def main(argv: list[str]) -> int:
    chosen = [b for b in BENCHES if not argv or b[0] in argv]
    started = time.monotonic()
    table: list[tuple[str, dict | None, str]] = []
    for name, args, limit in chosen:
        try:
            rows, status = run(name, args, limit)
        except subprocess.TimeoutExpired:
            rows, status = [], "timed out"
        table.extend((name, row, status) for row in rows)
        if not rows:
            table.append((name, None, status))
    print(f"\nall benchmarks: {time.monotonic() - started:.0f} s; load average {load_average()}")
    header = f"{'figure':<52} {'value':>10} {'reference':<26} {'ratio':>6} {'target':<24} verdict"
    print(header)
    print("-" * len(header))
    missed = 0
    for name, row, status in table:
        if row is None:
            print(f"{name:<52} {'-':>10} {'-':<26} {'-':>6} {'-':<24} no result ({status})")
            missed += 1
            continue
        met = row.get("met")
        verdict = "met" if met else ("missed" if met is not None else "info")
        missed += met is False
        ratio = row.get("ratio")
        value = f"{row['value']:.4g} {row.get('unit', '')}".strip()
        print(
            f"{row['figure']:<52} {value:>10} {str(row.get('reference', '-')):<26} "
            f"{'-' if ratio is None else f'{ratio:.2f}':>6} {str(row.get('target', '-')):<24} "
            f"{verdict}"
        )
    print(f"{missed} missed or without a result")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
