"""Benchmark: the direct download into a primary pool (fetch_into_pool) against curl.

Run from the repository root:

    .venv/bin/python bench/direct_download.py              # 1 GiB
    .venv/bin/python bench/direct_download.py --size 0.25  # a quick trial

It writes a RAW image of random bytes (os.urandom; checked with our own format detection so
that no known magic passes it off as another format) into a temporary directory, serves it on
127.0.0.1 only with bench/download.py's server (Debian's nginx if /usr/sbin/nginx exists, else
its ThreadingHTTPServer with sendfile(2)), and downloads it into a pool directory on the same
disk three times each, alternately, with

  (a) `curl -s -f -o POOL/FILE URL`;
  (b) the same, then `sha256sum POOL/FILE` (download, then hash: what CloudStack's KVM agent
      does for a direct download);
  (c) `agents_app.direct_download.fetch_into_pool(url=…, pool_dir=POOL, checksum="{SHA-256}…",
      image_format="RAW")` in a child process of its own (`--child`: Django set up on a
      throwaway SQLite URL, no query made). That is the whole deploy-time pipeline: a hidden
      temporary file in the pool, hashed in the same pass, checksum verified, fsynced, then
      inspected (our header check, then `qemu-img info` under limits). The child reports its
      own peak RSS (ru_maxrss, the whole process, Django included), qemu-img's, and where the
      time went (download, fsync, header check, qemu-img info; timers wrapped around those
      functions in the child only, no application code is changed).

It prints medians, the ratios and MET/MISSED against the targets below. Every subprocess has a
timeout, no new run starts after --budget seconds and the whole script stays under 4 minutes;
the server is always stopped and every file is removed at the end. No database, no network
beyond 127.0.0.1. The page cache cannot be dropped safely, so runs alternate instead.
Figures: docs/benchmarks.md, "Direct download into a pool".
"""

import argparse
import importlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for _folder in (BENCH_DIR, REPO_ROOT):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
# bench/download.py: its HTTP server, source-file writer and curl runners are reused as they are.
dl = importlib.import_module("download")

GIB = dl.GIB
MB = dl.MB  # MB and MB/s are decimal throughout
RUNS = 3
DEFAULT_SIZE_GIB = 1.0
IMAGE_FORMAT = "RAW"
DISK_RESERVE = 2 * GIB  # never fill the disk closer than this
TARGET_RATIO = 1.10  # at 1 GiB and more; small images pay a fixed start (qemu-img info)
SMALL_TARGET_RATIO = 1.2  # below 1 GiB
TARGET_RSS_MB = 100.0
TARGET_TEXT = (
    "targets: ours ≤ 1.10× curl alone with the hash included (≤ 1.2× below 1 GiB); "
    "peak RSS < 100 MB"
)
DEFAULT_BUDGET = 150.0  # seconds; no new run starts after that
HARD_LIMIT = 225.0  # seconds; every subprocess timeout is cut so that the script ends by then
SOURCE_ATTEMPTS = 3  # new random bytes if our detection ever sees a known format in them
KINDS = ("curl", "curl+sha256sum", "ours")


# --------------------------------------------------------------------------------------------
# Child mode: one fetch_into_pool() in a fresh process (`--child`)
# --------------------------------------------------------------------------------------------


def _timed(stats: dict, key: str, func):
    """func, with the wall time of each call added to stats[key] (this child process only)."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            stats[key] += time.perf_counter() - start

    return wrapper


def child_main(args: argparse.Namespace) -> int:
    """Set Django up, fetch once into the pool, print one JSON line."""
    started = time.perf_counter()
    import django

    django.setup()
    from agents_app.agent import direct_download
    from templates_app.images import inspection

    setup_s = time.perf_counter() - started
    rss_setup = dl.maxrss_kib()
    # Phase timers: module attributes looked up at call time, so wrapping them here times the
    # calls made by fetch_into_pool without touching the application's code.
    stats = {"download_s": 0.0, "fsync_s": 0.0, "inspect_s": 0.0, "header_s": 0.0, "info_s": 0.0}
    direct_download.download_to_file = _timed(stats, "download_s", direct_download.download_to_file)
    direct_download.inspect_image = _timed(stats, "inspect_s", direct_download.inspect_image)
    inspection.check_header = _timed(stats, "header_s", inspection.check_header)
    inspection.qemu_img_info = _timed(stats, "info_s", inspection.qemu_img_info)
    os.fsync = _timed(stats, "fsync_s", os.fsync)  # the file and the pool directory

    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fetched = direct_download.fetch_into_pool(
        url=args.url,
        pool_dir=Path(args.pool),
        checksum=args.checksum,
        image_format=args.format,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    qemu = resource.getrusage(resource.RUSAGE_CHILDREN)  # qemu-img info, waited for
    print(
        json.dumps(
            {
                "seconds": seconds,
                "setup_s": setup_s,
                "path": str(fetched.path),
                "size": fetched.size,
                "virtual_size": fetched.virtual_size,
                "sha256": fetched.sha256,
                "cpu_s": (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime),
                "qemu_cpu_s": qemu.ru_utime + qemu.ru_stime,
                "maxrss_kib": dl.maxrss_kib(),
                "maxrss_setup_kib": rss_setup,
                "qemu_maxrss_kib": qemu.ru_maxrss,
                "phases": stats,
            }
        )
    )
    return 0


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def make_image(path: Path, size: int) -> str:
    """A RAW image of random bytes that our detection takes for raw; return its SHA-256 hex."""
    from templates_app.images.inspection import detect_format  # needs no django.setup()

    for _attempt in range(SOURCE_ATTEMPTS):
        expected = dl.make_source(path, size)
        detected = detect_format(path)
        if detected is None:
            return expected
        print(f"  the random bytes look like {detected}: writing new ones")
    raise RuntimeError(f"{SOURCE_ATTEMPTS} random files in a row looked like an image format")


def clear_pool(pool: Path) -> None:
    """Remove every file of the pool (ours, curl's, and any temporary file a killed child left)."""
    for entry in pool.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def run_ours(url: str, pool: Path, size: int, expected: str, timeout: float, workdir: Path) -> dict:
    python = REPO_ROOT / ".venv" / "bin" / "python"
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        STENCIL_ENV="development",
        STENCIL_URL_ALLOW_LOOPBACK="true",
        # The local server's port: outbound requests allow only 80 and 443 otherwise.
        STENCIL_URL_ALLOWED_PORTS=str(urlsplit(url).port or ""),
        DATABASE_URL=f"sqlite:///{workdir / 'bench-direct-download.sqlite3'}",
        STENCIL_DATA_DIR=str(workdir / "data"),
        LOG_LEVEL="WARNING",
    )
    command = [
        str(python if python.exists() else sys.executable),
        str(Path(__file__).resolve()),
        "--child",
        "--url",
        url,
        "--pool",
        str(pool),
        "--checksum",
        f"{{SHA-256}}{expected}",
        "--format",
        IMAGE_FORMAT,
    ]
    cpu = dl.children_cpu()
    start = time.perf_counter()
    done = dl.run_bounded(command, timeout, cwd=REPO_ROOT, env=env)
    process_s = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"child exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    path = Path(report["path"])
    if report["size"] != size or report["sha256"] != expected:
        raise RuntimeError(f"child reported {report['size']} bytes, sha256 {report['sha256']}")
    if report["virtual_size"] != size:
        raise RuntimeError(f"inspection reported virtual size {report['virtual_size']}")
    if path.parent != pool or not path.name.startswith(".direct-"):
        raise RuntimeError(f"the fetched file is not a temporary file of the pool: {path}")
    dl.check_file(path, size)
    leftovers = sorted(entry.name for entry in pool.iterdir() if entry != path)
    if leftovers:
        raise RuntimeError(f"the pool holds more than the fetched file: {leftovers}")
    report["process_s"] = process_s
    report["process_cpu_s"] = dl.children_cpu() - cpu
    return report


def run_timeout(size: int, hard_deadline: float) -> float:
    """30 s plus the file at 50 MB/s, cut so that even two such steps end by the hard limit."""
    base = dl.FIXED_TIMEOUT + size / MB / dl.SLOWEST_MB_S
    return max(5.0, min(base, (hard_deadline - time.monotonic()) / 2))


def bench(size: int, server, src_dir: Path, pool: Path, workdir: Path, args, deadlines) -> dict:
    deadline, hard_deadline = deadlines
    name = f"image-{size >> 20}m.raw"
    source = src_dir / name
    print(f"\nwriting a {size:,}-byte RAW image of random bytes to {source}")
    start = time.perf_counter()
    expected = make_image(source, size)
    print(f"  written and fsynced in {time.perf_counter() - start:.1f} s; sha256 {expected}")
    url = server.url(name)
    dest = pool / name
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for rep in range(RUNS):
        order = KINDS[rep % len(KINDS) :] + KINDS[: rep % len(KINDS)]  # rotate who goes first
        for kind in order:
            if kind.startswith("curl") and not dl.CURL.exists():
                continue
            if kind == "curl+sha256sum" and not args.sha256sum:
                continue
            if time.monotonic() > deadline:
                print(f"  time budget of {args.budget:.0f} s used up: stopping early")
                return runs
            clear_pool(pool)
            dl.settle()
            timeout = run_timeout(size, hard_deadline)
            server_cpu = server.cpu_seconds()
            if kind == "curl":
                run = dl.run_curl(url, dest, size, timeout)
            elif kind == "curl+sha256sum":
                run = dl.run_curl_sha256sum(url, dest, size, expected, timeout)
            else:
                run = run_ours(url, pool, size, expected, timeout, workdir)
            run["server_cpu_s"] = server.cpu_seconds() - server_cpu
            clear_pool(pool)
            runs[kind].append(run)
            extra = ""
            if kind == "curl+sha256sum":
                summed = run["seconds"] - run["curl_s"]
                extra = f" (curl {run['curl_s']:.2f} s + sha256sum {summed:.2f} s)"
            elif kind == "ours":
                p = run["phases"]
                extra = (
                    f" (download {p['download_s']:.2f} s of which fsync {p['fsync_s']:.2f} s, "
                    f"inspection {p['inspect_s']:.2f} s: header {p['header_s']:.3f} s + "
                    f"qemu-img info {p['info_s']:.3f} s; process {run['process_s']:.2f} s; "
                    f"peak RSS {run['maxrss_kib'] * 1024 / MB:.1f} MB)"
                )
            print(
                f"  run {rep + 1} {kind:<15} {run['seconds']:6.2f} s "
                f"{dl.mb_s(size, run['seconds']):6.0f} MB/s  client CPU {run['cpu_s']:.2f} s, "
                f"server CPU {run['server_cpu_s']:.2f} s{extra}"
            )
    return runs


def median(runs: list[dict], key: str = "seconds") -> float:
    values = [run[key] for run in runs]
    return statistics.median(values) if values else float("nan")


def median_phase(runs: list[dict], key: str) -> float:
    values = [run["phases"][key] for run in runs]
    return statistics.median(values) if values else float("nan")


def report(size: int, runs: dict[str, list[dict]], server_kind: str) -> None:
    fmt = dl.fmt
    curl, curl_sha, ours = (median(runs[kind]) for kind in KINDS)
    rss = max((run["maxrss_kib"] for run in runs["ours"]), default=0) * 1024 / MB
    rss_setup = max((run["maxrss_setup_kib"] for run in runs["ours"]), default=0) * 1024 / MB
    qemu_rss = max((run["qemu_maxrss_kib"] for run in runs["ours"]), default=0) * 1024 / MB
    counts = ", ".join(f"{kind} {len(runs[kind])}" for kind in KINDS)
    print(f"\nsummary ({size / GIB:g} GiB, medians of the runs: {counts}; server: {server_kind})")
    print(
        f"  {'curl s':>7} {'MB/s':>5} {'curl+sha256sum s':>16} {'ours s':>7} {'MB/s':>5} "
        f"{'ours/curl':>9} {'ours/(curl+sha)':>15} {'ours RSS MB':>11}"
    )
    print(
        f"  {fmt(curl, '7.2f')} {fmt(dl.mb_s(size, curl), '5.0f')} {fmt(curl_sha, '16.2f')} "
        f"{fmt(ours, '7.2f')} {fmt(dl.mb_s(size, ours), '5.0f')} {fmt(ours / curl, '9.2f')} "
        f"{fmt(ours / curl_sha, '15.2f')} {rss:11.1f}"
    )
    print(
        f"  curl+sha256sum: curl part {fmt(median(runs['curl+sha256sum'], 'curl_s'), '.2f')} s; "
        f"ours = fetch_into_pool() inside the child; whole child process (Python start, "
        f"django.setup(), fetch) {fmt(median(runs['ours'], 'process_s'), '.2f')} s"
    )
    print(
        "  ours, median phases: download_to_file "
        f"{fmt(median_phase(runs['ours'], 'download_s'), '.2f')} s (of which fsync "
        f"{fmt(median_phase(runs['ours'], 'fsync_s'), '.2f')} s), inspect_image "
        f"{fmt(median_phase(runs['ours'], 'inspect_s'), '.3f')} s (header check "
        f"{fmt(median_phase(runs['ours'], 'header_s'), '.3f')} s, qemu-img info "
        f"{fmt(median_phase(runs['ours'], 'info_s'), '.3f')} s)"
    )
    print(
        f"  peak RSS: after django.setup() {rss_setup:.1f} MB, whole child {rss:.1f} MB; "
        f"qemu-img info (its own process) {qemu_rss:.1f} MB"
    )
    print(
        "  median CPU s (client / server): "
        + ", ".join(
            f"{kind} {fmt(median(runs[kind], 'cpu_s'), '.2f')} / "
            f"{fmt(median(runs[kind], 'server_cpu_s'), '.2f')}"
            for kind in KINDS
        )
        + f"; of ours, qemu-img {fmt(median(runs['ours'], 'qemu_cpu_s'), '.2f')}"
    )
    print(f"  {TARGET_TEXT}")
    target = TARGET_RATIO if size >= GIB else SMALL_TARGET_RATIO
    rows = []
    if runs["curl"] and runs["ours"]:
        ratio = ours / curl
        verdict = "MET" if ratio <= target else "MISSED"
        rows.append(
            {
                "figure": f"direct download {size / GIB:g} GiB, ours / curl -o",
                "value": ours,
                "unit": "s",
                "reference": f"curl {curl:.2f} s",
                "ratio": ratio,
                "target": f"<= {target}x",
                "met": ratio <= target,
            }
        )
        print(
            f"  speed: {verdict} (ours/curl {ratio:.2f}×, "
            f"ours/(curl+sha256sum) {ours / curl_sha:.2f}×)"
        )
    else:
        print("  speed: not checked (curl missing or no run of ours)")
    if runs["ours"]:
        print(f"  memory: {'MET' if rss < TARGET_RSS_MB else 'MISSED'} (peak RSS {rss:.1f} MB)")
        rows.append(
            {
                "figure": f"direct download {size / GIB:g} GiB, peak RSS",
                "value": rss,
                "unit": "MB",
                "target": f"< {TARGET_RSS_MB:.0f} MB",
                "met": rss < TARGET_RSS_MB,
            }
        )
    from bench import _common

    _common.report(f"direct_download_{size / GIB:g}g", rows)


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.budget
    hard_deadline = started + HARD_LIMIT
    if not dl.CURL.exists():
        print(f"{dl.CURL} is missing: the curl comparisons are skipped (only ours is measured)")
    size = int(args.size * GIB)
    base = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    need = 2 * size  # the served image and the copy in the pool
    if need > free - DISK_RESERVE:
        print(
            f"not run: needs {need / GIB:.2f} GiB in {base}, {free / GIB:.1f} GiB free "
            f"(keeping {DISK_RESERVE / GIB:.0f} GiB spare)"
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="stencil-bench-direct-download-", dir=args.dir))
    src_dir, pool = workdir / "www", workdir / "pool"
    src_dir.mkdir()
    pool.mkdir()
    server = dl.Server(src_dir, workdir, lifetime=HARD_LIMIT + 60)
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    try:
        server.start()
        (src_dir / "ready").write_bytes(b"ok")
        server.wait_ready("ready")
        print(
            f"direct-download benchmark: {size / GIB:g} GiB {IMAGE_FORMAT} image, {RUNS} "
            f"alternating runs each; files in {workdir}\n  server: {server.kind} on "
            f"127.0.0.1:{server.port}\n  curl: {dl.CURL if dl.CURL.exists() else 'missing'}"
            f"\n  {os.cpu_count()} CPUs, kernel {os.uname().release}, {dl.load_average()}"
        )
        runs = bench(size, server, src_dir, pool, workdir, args, (deadline, hard_deadline))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if workdir.exists():
        print(f"warning: {workdir} could not be removed entirely")
    if not runs["ours"]:
        print("nothing measured")
        return 1
    report(size, runs, server.kind)
    print(f"  {dl.load_average()}; total {time.monotonic() - started:.0f} s")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=float,
        default=DEFAULT_SIZE_GIB,
        help=f"image size in GiB (default {DEFAULT_SIZE_GIB:g}; fractions such as 0.25 work)",
    )
    parser.add_argument(
        "--dir", default=None, help="where the temporary files go (default: the system's temp)"
    )
    parser.add_argument(
        "--no-sha256sum",
        dest="sha256sum",
        action="store_false",
        help="skip contestant (b), curl then sha256sum (a reference, not a target)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET,
        help=f"seconds after which no new run starts (default {DEFAULT_BUDGET:.0f}; "
        f"the script ends within {HARD_LIMIT:.0f} s whatever it is)",
    )
    # Internal mode (the benchmark starts itself with it).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--checksum", default="", help=argparse.SUPPRESS)
    parser.add_argument("--format", default=IMAGE_FORMAT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and not 0 < args.size <= 64:
        parser.error("--size takes GiB between 0 and 64")
    args.budget = min(args.budget, HARD_LIMIT - 60)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(child_main(arguments) if arguments.child else main(arguments))
