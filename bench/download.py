"""Benchmark: our streaming download (hash in the same pass, checksum verified) against curl.

Run from the repository root (`make bench` runs it too):

    .venv/bin/python bench/download.py              # 1 GiB and 4 GiB
    .venv/bin/python bench/download.py --sizes 1    # 1 GiB only

It writes a random file into a temporary directory, serves it on 127.0.0.1 only (Debian's nginx
with `sendfile on` if /usr/sbin/nginx exists, else a ThreadingHTTPServer that answers with
sendfile(2)), and downloads it three times each, alternately, with

  (a) `curl -s -f -o DEST URL`;
  (b) the same, then `sha256sum DEST` (the hash in a second pass, like a naive tool);
  (c) `templates_app.images.downloader.download_to_file(URL, DEST, checksum="{SHA-256}…")` in a
      child process of its own (`--child`, Django set up on a throwaway SQLite URL, no query made),
      which reports its own peak RSS (ru_maxrss, the whole process, Django included).

It prints medians, the ratios to the targets below and MET/MISSED, then one more instrumented
run of (c) per size that splits the reading thread's time (socket reads, file writes, waits for
the hashing thread) from the hashing thread's, to explain a miss (those timers wrap the buffer
path, which TLS and chunked bodies take; a plain-HTTP body is spliced and shows almost none),
and a probe of page-cache write speed for 1 MiB against 256 KiB write() calls (`--no-phases`
skips both).
`--write-slice 256` adds a what-if contestant: (c) with each os.write() cut to 256 KiB, patched
in the child only. Every subprocess has a timeout, the server is always stopped and every file
is removed at the end. No database, no network beyond 127.0.0.1. The page cache cannot be
dropped safely, so runs alternate instead. Figures: docs/benchmarks.md, "Download".
"""

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `bench._common` and the project, from any cwd
GIB = 1 << 30
MB = 1_000_000  # MB and MB/s are decimal throughout
WRITE_CHUNK = 8 << 20
RUNS = 3
DEFAULT_SIZES = "1,4"
DISK_RESERVE = 2 * GIB  # never fill the disk closer than this
NGINX = Path("/usr/sbin/nginx")
CURL = Path("/usr/bin/curl")
TARGET_RATIO = 1.15
TARGET_RSS_MB = 100.0
TARGET_TEXT = "targets: ours ≤ 1.15× curl alone (hash included); peak RSS < 100 MB at both sizes"
SERVER_START_TIMEOUT = 15.0
SLOWEST_MB_S = 50.0  # a run slower than this is considered hung (per-subprocess timeout)
FIXED_TIMEOUT = 30.0  # plus this much for process start-up
DEFAULT_BUDGET = 900.0  # seconds; no new run starts after that (the script stops by itself)
# `--write-slice KIB`: a fourth contestant, ours with each os.write() cut (child-patched).
WHAT_IF = "ours, sliced"
# After the runs: how fast the page cache takes the downloader's 1 MiB writes vs 256 KiB ones.
WRITE_PROBE_BYTES = GIB  # the slowdown shows after some hundreds of MiB
WRITE_PROBE_BUFFER = 1 << 20
WRITE_PROBE_PIECES = (1 << 20, 256 << 10)
WRITE_PROBE_RUNS = 2
WRITE_PROBE_PAUSE = 2.5


# --------------------------------------------------------------------------------------------
# Child mode: one download_to_file() in a fresh process (`--child`)
# --------------------------------------------------------------------------------------------


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _instrument(downloader) -> dict:
    """Time the phases of a download from outside downloader.py (this child process only).

    Reading thread: socket reads (HTTPResponse.readinto), file writes (_write_all), waits for a
    free buffer (_Hasher.take: the hashing thread is behind), queueing (_Hasher.submit), fsync.
    Hashing thread: time inside hash updates, and its CPU time.
    """
    import http.client

    stats = {
        "read_s": 0.0,
        "reads": 0,
        "write_s": 0.0,
        "take_wait_s": 0.0,
        "submit_s": 0.0,
        "fsync_s": 0.0,
        "hash_s": 0.0,
        "hash_updates": 0,
        "hash_thread_cpu_s": 0.0,
    }
    clock = time.perf_counter

    def timed(key, func, count_key=None):
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return func(*args, **kwargs)
            finally:
                stats[key] += clock() - start
                if count_key:
                    stats[count_key] += 1

        return wrapper

    http.client.HTTPResponse.readinto = timed("read_s", http.client.HTTPResponse.readinto, "reads")
    downloader._write_all = timed("write_s", downloader._write_all)
    os.fsync = timed("fsync_s", os.fsync)
    hasher_cls = downloader._Hasher
    hasher_cls.take = timed("take_wait_s", hasher_cls.take)
    hasher_cls.submit = timed("submit_s", hasher_cls.submit)

    class TimedHash:
        def __init__(self, inner):
            self._inner = inner

        def update(self, data):
            start = clock()
            self._inner.update(data)
            stats["hash_s"] += clock() - start
            stats["hash_updates"] += 1

        def hexdigest(self):
            return self._inner.hexdigest()

    original_new = hasher_cls._new_hashes
    original_run = hasher_cls._run

    def new_hashes(self):
        return {name: TimedHash(h) for name, h in original_new(self).items()}

    def run(self):
        cpu = time.thread_time()
        try:
            original_run(self)
        finally:
            stats["hash_thread_cpu_s"] += time.thread_time() - cpu

    hasher_cls._new_hashes = new_hashes
    hasher_cls._run = run
    return stats


def _slice_writes(downloader, limit: int) -> None:
    """What-if (`--write-slice`, this child only): each os.write() at most `limit` bytes."""

    def write_all(fd: int, buffer: bytearray, count: int) -> None:
        with memoryview(buffer) as view:
            written = 0
            while written < count:
                written += os.write(fd, view[written : min(count, written + limit)])

    downloader._write_all = write_all


def child_main(args: argparse.Namespace) -> int:
    """Set Django up, download once, print one JSON line (seconds, size, sha256, peak RSS)."""
    started = time.perf_counter()
    import django

    django.setup()
    from templates_app.images import downloader

    setup_s = time.perf_counter() - started
    rss_setup = maxrss_kib()
    if args.write_slice:
        _slice_writes(downloader, args.write_slice)
    stats = _instrument(downloader) if args.instrument else None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    main_cpu = time.thread_time()
    start = time.perf_counter()
    result = downloader.download_to_file(args.url, Path(args.dest), checksum=args.checksum)
    seconds = time.perf_counter() - start
    main_cpu = time.thread_time() - main_cpu
    after = resource.getrusage(resource.RUSAGE_SELF)
    if stats is not None:
        stats["main_thread_cpu_s"] = main_cpu
    print(
        json.dumps(
            {
                "seconds": seconds,
                "setup_s": setup_s,
                "size": result.size,
                "sha256": result.sha256,
                "digest": result.digest,
                "cpu_s": (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime),
                "maxrss_kib": maxrss_kib(),
                "maxrss_setup_kib": rss_setup,
                "phases": stats,
            }
        )
    )
    return 0


# --------------------------------------------------------------------------------------------
# Server mode: a threaded Python server (`--serve`), used when nginx is not installed
# --------------------------------------------------------------------------------------------


def serve_main(args: argparse.Namespace) -> int:
    """ThreadingHTTPServer on 127.0.0.1 that sends file bodies with sendfile(2), like nginx."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def copyfile(self, source, outputfile):
            outputfile.flush()
            self.connection.sendfile(source)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port), functools.partial(Handler, directory=args.root)
    )
    server.daemon_threads = True
    # Bounded even if the parent dies without stopping us.
    threading.Timer(args.lifetime, server.shutdown).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    os._exit(0)  # the lifetime timer may still be pending


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with start_new_session=True, and its process group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    else:  # the leader is gone; its group may not be
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class Server:
    """nginx (Debian's, sendfile on) or the --serve Python server; 127.0.0.1 only."""

    def __init__(self, root: Path, workdir: Path, lifetime: float):
        self.root = root
        self.workdir = workdir
        self.lifetime = lifetime
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.kind = ""
        self.log = workdir / "server.log"

    def start(self) -> None:
        if NGINX.exists():
            self.kind = f"nginx ({NGINX}, 1 worker, sendfile on)"
            conf = self.workdir / "nginx.conf"
            for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (self.workdir / f"{sub}_temp").mkdir(exist_ok=True)
            temp_paths = "\n".join(
                f"  {sub}_temp_path {self.workdir / (sub + '_temp')};"
                for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            conf.write_text(
                f"daemon off;\n"
                f"worker_processes 1;\n"
                f"pid {self.workdir / 'nginx.pid'};\n"
                f"error_log {self.workdir / 'nginx-error.log'};\n"
                f"events {{ worker_connections 64; }}\n"
                f"http {{\n"
                f"  sendfile on;\n"
                f"  access_log off;\n"
                f"  default_type application/octet-stream;\n"
                f"{temp_paths}\n"
                f"  server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}\n"
                f"}}\n"
            )
            # Workers run as nobody when we are root: they must be able to read the file.
            for path in (self.workdir, self.root):
                path.chmod(0o755)
            command = [
                str(NGINX),
                "-p",
                f"{self.workdir}/",
                "-c",
                str(conf),
                "-e",
                str(self.workdir / "nginx-error.log"),
            ]
        else:
            self.kind = (
                "Python ThreadingHTTPServer with sendfile (nginx is not installed: "
                f"{NGINX} missing)"
            )
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve",
                "--root",
                str(self.root),
                "--port",
                str(self.port),
                "--lifetime",
                str(int(self.lifetime)),
            ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, name: str) -> None:
        url = self.url(name)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                request = urllib.request.Request(url, method="HEAD")
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"the server did not answer within {SERVER_START_TIMEOUT} s\n{log}")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def cpu_seconds(self) -> float:
        from bench import _common

        return _common.process_group_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        if self.proc is not None:
            # nginx: SIGTERM is a fast shutdown; the Python server just exits.
            stop_group(self.proc)


SOURCE_BLOCK = 64 << 20


def make_source(path: Path, size: int) -> str:
    """Write `size` bytes: 64 MiB from os.urandom, repeated (nothing on the path compresses or
    deduplicates, and generating 4 GiB of fresh randomness took half the time budget); return
    their SHA-256 hex."""
    digest = hashlib.sha256()
    block = memoryview(os.urandom(min(SOURCE_BLOCK, size)))
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            at = (size - remaining) % len(block)
            chunk = block[at : at + min(WRITE_CHUNK, remaining, len(block) - at)]
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
        out.flush()
        # On disk before the measurements, so its write-back does not overlap them.
        os.fsync(out.fileno())
    path.chmod(0o644)
    return digest.hexdigest()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_bounded(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group, killed as a group when the timeout expires."""
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kwargs,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(command[:3])} …") from None
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def check_file(dest: Path, size: int) -> None:
    actual = dest.stat().st_size if dest.exists() else -1
    if actual != size:
        raise RuntimeError(f"{dest} has {actual} bytes, expected {size}")


def run_curl(url: str, dest: Path, size: int, timeout: float) -> dict:
    cpu = children_cpu()
    start = time.perf_counter()
    done = run_bounded([str(CURL), "-s", "-f", "-o", str(dest), url], timeout)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"curl exited {done.returncode}: {done.stderr.decode()[-500:]}")
    check_file(dest, size)
    return {"seconds": seconds, "cpu_s": children_cpu() - cpu}


def run_curl_sha256sum(url: str, dest: Path, size: int, expected: str, timeout: float) -> dict:
    cpu = children_cpu()
    start = time.perf_counter()
    done = run_bounded([str(CURL), "-s", "-f", "-o", str(dest), url], timeout)
    if done.returncode:
        raise RuntimeError(f"curl exited {done.returncode}: {done.stderr.decode()[-500:]}")
    curl_s = time.perf_counter() - start
    summed = run_bounded(["sha256sum", str(dest)], timeout)
    seconds = time.perf_counter() - start
    if summed.returncode or summed.stdout.split()[0].decode() != expected:
        raise RuntimeError(f"sha256sum failed or disagrees: {summed.stdout[:100]!r}")
    check_file(dest, size)
    return {"seconds": seconds, "curl_s": curl_s, "cpu_s": children_cpu() - cpu}


def run_ours(
    url: str,
    dest: Path,
    size: int,
    expected: str,
    timeout: float,
    workdir: Path,
    *,
    phases: bool = False,
    write_slice: int = 0,
) -> dict:
    python = REPO_ROOT / ".venv" / "bin" / "python"
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        STENCIL_ENV="development",
        STENCIL_URL_ALLOW_LOOPBACK="true",
        # The local server's port: outbound requests allow only 80 and 443 otherwise.
        STENCIL_URL_ALLOWED_PORTS=str(urlsplit(url).port or ""),
        DATABASE_URL=f"sqlite:///{workdir / 'bench-download.sqlite3'}",
        STENCIL_DATA_DIR=str(workdir / "data"),
        LOG_LEVEL="WARNING",
    )
    command = [
        str(python if python.exists() else sys.executable),
        str(Path(__file__).resolve()),
        "--child",
        "--url",
        url,
        "--dest",
        str(dest),
        "--checksum",
        f"{{SHA-256}}{expected}",
    ]
    if phases:
        command.append("--instrument")
    if write_slice:
        command += ["--write-slice", str(write_slice // 1024)]
    cpu = children_cpu()
    start = time.perf_counter()
    done = run_bounded(command, timeout, cwd=REPO_ROOT, env=env)
    process_s = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"child exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if report["size"] != size or report["sha256"] != expected:
        raise RuntimeError(f"child reported {report['size']} bytes, sha256 {report['sha256']}")
    check_file(dest, size)
    report["process_s"] = process_s
    report["process_cpu_s"] = children_cpu() - cpu
    return report


def settle() -> None:
    """Before a timed run: the dirty pages of earlier writes go to disk first, so that no
    contestant pays for another's write-back."""
    os.sync()


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    for stray in path.parent.glob(f".{path.name}.part-*"):  # left by a killed child
        stray.unlink(missing_ok=True)


def mb_s(size: int, seconds: float) -> float:
    return size / MB / seconds if seconds else float("nan")


def bench_size(
    gib: float, server: Server, src_dir: Path, dst_dir: Path, workdir: Path, args, deadline: float
) -> dict | None:
    size = int(gib * GIB)
    name = f"random-{gib:g}g.bin"
    source = src_dir / name
    dest = dst_dir / name
    timeout = FIXED_TIMEOUT + size / MB / SLOWEST_MB_S
    print(f"\n[{gib:g} GiB] writing {size:,} random bytes to {source}")
    start = time.perf_counter()
    try:
        expected = make_source(source, size)
        print(f"  written and fsynced in {time.perf_counter() - start:.1f} s; sha256 {expected}")
        url = server.url(name)
        runs: dict[str, list[dict]] = {"curl": [], "curl+sha256sum": [], "ours": []}
        if args.write_slice:
            runs[WHAT_IF] = []
        kinds = list(runs)
        for rep in range(RUNS):
            turn = rep % len(kinds)
            order = kinds[turn:] + kinds[:turn]  # alternate, rotating who goes first
            for kind in order:
                if kind.startswith("curl") and not CURL.exists():
                    continue
                if kind == "curl+sha256sum" and not args.sha256sum:
                    continue
                if time.monotonic() > deadline:
                    print(f"  time budget of {args.budget:.0f} s used up: stopping early")
                    return summarize(gib, size, runs, args.write_slice)
                remove(dest)
                settle()
                server_cpu = server.cpu_seconds()
                if kind == "curl":
                    run = run_curl(url, dest, size, timeout)
                elif kind == "curl+sha256sum":
                    run = run_curl_sha256sum(url, dest, size, expected, timeout)
                elif kind == "ours":
                    run = run_ours(url, dest, size, expected, timeout, workdir)
                else:
                    run = run_ours(
                        url, dest, size, expected, timeout, workdir, write_slice=args.write_slice
                    )
                run["server_cpu_s"] = server.cpu_seconds() - server_cpu
                remove(dest)
                runs[kind].append(run)
                extra = ""
                if kind != "curl" and kind != "curl+sha256sum":
                    extra = (
                        f" (process {run['process_s']:.2f} s incl. start-up; "
                        f"peak RSS {run['maxrss_kib'] * 1024 / MB:.1f} MB)"
                    )
                print(
                    f"  run {rep + 1} {kind:<15} {run['seconds']:7.2f} s "
                    f"{mb_s(size, run['seconds']):7.0f} MB/s  client CPU {run['cpu_s']:.2f} s, "
                    f"server CPU {run['server_cpu_s']:.2f} s{extra}"
                )
        summary = summarize(gib, size, runs, args.write_slice)
        if args.phases and time.monotonic() < deadline:
            remove(dest)
            run = run_ours(url, dest, size, expected, timeout, workdir, phases=True)
            remove(dest)
            summary["phases"] = run
            print_phases(size, run)
        return summary
    finally:
        remove(dest)
        source.unlink(missing_ok=True)


def summarize(gib: float, size: int, runs: dict[str, list[dict]], write_slice: int) -> dict:
    def median(kind: str, key: str = "seconds") -> float:
        values = [run[key] for run in runs[kind]]
        return statistics.median(values) if values else float("nan")

    ours = runs["ours"]
    return {
        "gib": gib,
        "size": size,
        "runs": {kind: len(values) for kind, values in runs.items()},
        "write_slice": write_slice,
        "curl": median("curl"),
        "curl_sha": median("curl+sha256sum"),
        "curl_sha_curl_part": median("curl+sha256sum", "curl_s"),
        "ours": median("ours"),
        "ours_process": median("ours", "process_s"),
        "ours_setup": median("ours", "setup_s"),
        "ours_rss_mb": max((r["maxrss_kib"] for r in ours), default=0) * 1024 / MB,
        "ours_rss_setup_mb": max((r["maxrss_setup_kib"] for r in ours), default=0) * 1024 / MB,
        "what_if": median(WHAT_IF) if WHAT_IF in runs else float("nan"),
        "what_if_rss_mb": max((r["maxrss_kib"] for r in runs.get(WHAT_IF, [])), default=0)
        * 1024
        / MB,
        "cpu": {kind: median(kind, "cpu_s") for kind in runs},
        "server_cpu": {kind: median(kind, "server_cpu_s") for kind in runs},
    }


def print_phases(size: int, run: dict) -> None:
    p = run["phases"]
    wall = run["seconds"]
    print(
        f"  instrumented run of ours: {wall:.2f} s ({mb_s(size, wall):.0f} MB/s; the timers "
        f"add a little), process CPU {run['cpu_s']:.2f} s"
    )
    print(
        f"    reading thread: socket reads {p['read_s']:.2f} s ({p['reads']} readinto calls), "
        f"file writes {p['write_s']:.2f} s, waiting for a free buffer {p['take_wait_s']:.2f} s, "
        f"queueing {p['submit_s']:.2f} s, fsync {p['fsync_s']:.2f} s; "
        f"CPU {p['main_thread_cpu_s']:.2f} s"
    )
    print(
        f"    hashing thread: in sha256 update {p['hash_s']:.2f} s "
        f"({mb_s(size, p['hash_s']):.0f} MB/s while hashing), CPU {p['hash_thread_cpu_s']:.2f} s"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (other work shares the CPUs)"


def write_probe(dst_dir: Path) -> None:
    """Page-cache write speed by write(2) size: the same 1 MiB buffer, whole or in 4 slices.

    Each write follows a pause, as the benchmark's runs do (a child's start-up, a second pass),
    so memory freed by the previous file has been handed back the same way.
    """
    buffer = memoryview(bytearray(os.urandom(WRITE_PROBE_BUFFER)))
    speeds: dict[int, list[float]] = {piece: [] for piece in WRITE_PROBE_PIECES}
    path = dst_dir / "write-probe.bin"
    try:
        for _rep in range(WRITE_PROBE_RUNS):
            for piece in WRITE_PROBE_PIECES:
                time.sleep(WRITE_PROBE_PAUSE)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    start = time.perf_counter()
                    for _ in range(WRITE_PROBE_BYTES // WRITE_PROBE_BUFFER):
                        for offset in range(0, WRITE_PROBE_BUFFER, piece):
                            os.write(fd, buffer[offset : offset + piece])
                    speeds[piece].append(mb_s(WRITE_PROBE_BYTES, time.perf_counter() - start))
                finally:
                    os.close(fd)
                    path.unlink()
    finally:
        path.unlink(missing_ok=True)
    print(
        f"\npage-cache write probe ({WRITE_PROBE_BYTES >> 20} MiB from a 1 MiB buffer, no fsync, "
        f"median of {WRITE_PROBE_RUNS}): "
        + ", ".join(
            f"write({piece >> 10} KiB) {statistics.median(values):.0f} MB/s"
            for piece, values in speeds.items()
        )
    )


def fmt(value: float, spec: str) -> str:
    return "n/a" if value != value else format(value, spec)  # NaN when skipped


def report(results: list[dict], sizes: list[float], server_kind: str, curl_ok: bool) -> bool:
    print(f"\nsummary (medians of {RUNS}; server: {server_kind})")
    header = (
        f"  {'size':>5} {'curl s':>7} {'MB/s':>6} {'curl+sha s':>10} {'ours s':>7} {'MB/s':>6} "
        f"{'ours/curl':>9} {'ours/(c+sha)':>12} {'ours RSS MB':>11}"
    )
    print(header)
    for r in results:
        size = r["size"]
        print(
            f"  {r['gib']:>3g}Gi {fmt(r['curl'], '7.2f')} {fmt(mb_s(size, r['curl']), '6.0f')} "
            f"{fmt(r['curl_sha'], '10.2f')} {fmt(r['ours'], '7.2f')} "
            f"{fmt(mb_s(size, r['ours']), '6.0f')} {fmt(r['ours'] / r['curl'], '9.2f')} "
            f"{fmt(r['ours'] / r['curl_sha'], '12.2f')} {r['ours_rss_mb']:>11.1f}"
        )
    print(
        "  ours s = download_to_file() inside the child; whole child process (Python start, "
        "Django setup, download): "
        + ", ".join(f"{r['gib']:g} GiB {r['ours_process']:.2f} s" for r in results)
    )
    print(
        "  peak RSS after django.setup(), before the download: "
        + ", ".join(f"{r['gib']:g} GiB {r['ours_rss_setup_mb']:.1f} MB" for r in results)
    )
    print(
        "  median CPU s (client / server): "
        + "; ".join(
            f"{r['gib']:g} GiB "
            + ", ".join(
                f"{kind} {fmt(r['cpu'][kind], '.2f')} / {fmt(r['server_cpu'][kind], '.2f')}"
                for kind in r["cpu"]
            )
            for r in results
        )
    )
    print(f"  {TARGET_TEXT}")
    ok = True
    if curl_ok:
        ratios = [r["ours"] / r["curl"] for r in results]
        met = all(ratio <= TARGET_RATIO for ratio in ratios)
        ok &= met
        print(
            f"  speed: {'MET' if met else 'MISSED'} (ours/curl "
            + ", ".join(
                f"{r['gib']:g} GiB {ratio:.2f}×" for r, ratio in zip(results, ratios, strict=True)
            )
            + ")"
        )
    else:
        print(f"  speed: not checked ({CURL} is missing)")
    if any(r["what_if"] == r["what_if"] for r in results):  # measured (not NaN)
        print(
            f"  what-if, not the code as it is ({WHAT_IF}: os.write() cut to "
            f"{results[0]['write_slice'] >> 10} KiB in the child): "
            + ", ".join(
                f"{r['gib']:g} GiB {fmt(r['what_if'], '.2f')} s, "
                f"{fmt(mb_s(r['size'], r['what_if']), '.0f')} MB/s, "
                f"{fmt(r['what_if'] / r['curl'], '.2f')}× curl, "
                f"peak RSS {r['what_if_rss_mb']:.1f} MB"
                for r in results
            )
        )
    rss_met = all(r["ours_rss_mb"] < TARGET_RSS_MB for r in results)
    ok &= rss_met
    print(
        f"  memory: {'MET' if rss_met else 'MISSED'} (peak RSS "
        + ", ".join(f"{r['gib']:g} GiB {r['ours_rss_mb']:.1f} MB" for r in results)
        + ")"
    )
    missing = [gib for gib in sizes if gib not in {r["gib"] for r in results}]
    if missing:
        print(f"  not measured: {', '.join(f'{g:g} GiB' for g in missing)} (see above)")
    rows = []
    for r in results:
        if curl_ok:
            rows.append(
                {
                    "figure": f"store download {r['gib']:g} GiB, ours / curl -o",
                    "value": r["ours"],
                    "unit": "s",
                    "reference": f"curl {r['curl']:.2f} s",
                    "ratio": r["ours"] / r["curl"],
                    "target": f"<= {TARGET_RATIO}x",
                    "met": r["ours"] / r["curl"] <= TARGET_RATIO,
                }
            )
        rows.append(
            {
                "figure": f"store download {r['gib']:g} GiB, peak RSS",
                "value": r["ours_rss_mb"],
                "unit": "MB",
                "target": f"< {TARGET_RSS_MB:.0f} MB",
                "met": r["ours_rss_mb"] < TARGET_RSS_MB,
            }
        )
    from bench import _common

    _common.report("download", rows)
    return ok


def parse_sizes(text: str) -> list[float]:
    try:
        sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("--sizes takes GiB, e.g. 1,4 or 0.5") from None
    if not sizes or any(not size > 0 for size in sizes):
        raise argparse.ArgumentTypeError("--sizes takes positive GiB, e.g. 1,4 or 0.5")
    return sizes


def main(args: argparse.Namespace) -> int:
    curl_ok = CURL.exists()
    if not curl_ok:
        print(f"{CURL} is missing: the curl comparisons are skipped (only ours is measured)")
    deadline = time.monotonic() + args.budget
    workdir = Path(tempfile.mkdtemp(prefix="stencil-bench-download-", dir=args.dir))
    src_dir, dst_dir = workdir / "www", workdir / "dest"
    src_dir.mkdir()
    dst_dir.mkdir()
    results: list[dict] = []
    server = Server(src_dir, workdir, lifetime=args.budget + 120)
    try:
        server.start()
        (src_dir / "ready").write_bytes(b"ok")
        server.wait_ready("ready")
        print(
            f"download benchmark: sizes {', '.join(f'{s:g} GiB' for s in args.sizes)}, "
            f"{RUNS} alternating runs each; files in {workdir}\n  server: {server.kind} on "
            f"127.0.0.1:{server.port}\n  curl: {CURL if curl_ok else 'missing'}\n  "
            f"{os.cpu_count()} CPUs, kernel {os.uname().release}, {load_average()}"
        )
        for gib in args.sizes:
            free = shutil.disk_usage(workdir).free
            need = int(2 * gib * GIB)  # source + destination
            if need > free - DISK_RESERVE:
                print(
                    f"\n[{gib:g} GiB] skipped: needs {need / GIB:.0f} GiB, "
                    f"{free / GIB:.1f} GiB free (keeping {DISK_RESERVE // GIB} GiB spare)"
                )
                continue
            if time.monotonic() > deadline:
                print(f"\n[{gib:g} GiB] skipped: time budget of {args.budget:.0f} s used up")
                continue
            summary = bench_size(gib, server, src_dir, dst_dir, workdir, args, deadline)
            if summary is not None and summary["runs"]["ours"]:
                results.append(summary)
        if args.phases and results and time.monotonic() < deadline:
            write_probe(dst_dir)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if not results:
        print("nothing measured")
        return 1
    report(results, args.sizes, server.kind, curl_ok)
    print(f"  {load_average()}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes(DEFAULT_SIZES),
        help=f"file sizes in GiB, comma-separated (default {DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--dir", default=None, help="where the temporary files go (default: the system's temp)"
    )
    parser.add_argument(
        "--no-phases",
        dest="phases",
        action="store_false",
        help="skip the instrumented run of ours and the page-cache write probe",
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
        help=f"seconds after which no new run starts (default {DEFAULT_BUDGET:.0f})",
    )
    parser.add_argument(
        "--write-slice",
        type=lambda text: int(text) * 1024,
        default=0,
        metavar="KIB",
        help="what-if: also time ours with each os.write() cut to KIB KiB "
        "(patched in the child only; downloader.py is not changed)",
    )
    # Internal modes (the benchmark starts itself with them).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    parser.add_argument("--checksum", default="", help=argparse.SUPPRESS)
    parser.add_argument("--instrument", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=600, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        sys.exit(child_main(arguments))
    if arguments.serve:
        sys.exit(serve_main(arguments))
    sys.exit(main(arguments))
