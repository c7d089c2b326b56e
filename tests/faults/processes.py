"""Real processes for the fault suite: storage workers, agents, web, a private Redis, and an HTTP
server whose answers a test scripts (slow, stalled, truncated, reset, 5xx, ranges).

Every process runs in its own session (process group) so that a SIGKILL takes its children
(the worker's pool, qemu-img) with it; its output goes to a log file that a failure prints.
"""

import contextlib
import http.server
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def database_url(application_name: str = "") -> str:
    """The test database, for a subprocess; `application_name` tags its connections so that a
    test can kill exactly those backends (pg_stat_activity.application_name)."""
    db = connection.settings_dict
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    url = f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}"
    return f"{url}?application_name={quote(application_name)}" if application_name else url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 30, what: str = "condition", logs=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = logs() if callable(logs) else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{tails}")
        time.sleep(0.05)


class Process:
    """One subprocess in its own session, output to <logs>/<label>.log (appended on restart)."""

    def __init__(self, label: str, args: list[str], env: dict[str, str], logs: Path):
        self.label, self.args, self.env, self.logs = label, args, env, logs
        self.popen: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.logs / f"{self.label}.log"

    def start(self) -> None:
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole group: no handler, no cleanup, as when a machine loses power."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # whatever is left of the group
        self.popen.wait(timeout=10)

    def logged_since_start(self, text: str) -> bool:
        with open(self.log, "rb") as log:
            log.seek(self._log_start)
            return text.encode() in log.read()

    def wait_ready(self, worker: str) -> None:
        """A Celery worker logs '<name> ready.' once it consumes (after connecting and mingle)."""
        wait_until(
            lambda: not self.alive() or self.logged_since_start(f"{worker} ready."),
            what=f"worker {worker} to be ready",
            logs=self.tail,
        )
        assert self.alive(), self.tail()

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"----- {self.label} -----\n" + "\n".join(text.splitlines()[-lines:])


def base_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "STENCIL_URL_ALLOW_LOOPBACK": "true",
        "STENCIL_GC_GRACE_SECONDS": "0",  # as in the test process (conftest.gc_grace_off)
    }
    env.update(extra)
    return env


class StorageWorker(Process):
    """`celery worker` consuming the test's private queue as its storage queue (template sync,
    downloads and their retries all go there)."""

    def __init__(
        self,
        queue: str,
        logs: Path,
        *,
        broker_url: str | None = None,
        prefix: tuple[str, ...] = (),
        **env: str,
    ):
        self.queue, self.broker_url = queue, broker_url
        self.name = f"storage-{uuid.uuid4().hex[:8]}@localhost"
        extra = {"STENCIL_STORAGE_QUEUE": queue, "CELERY_TASK_DEFAULT_QUEUE": queue, **env}
        if broker_url:
            extra["CELERY_BROKER_URL"] = broker_url
        args = [*prefix, sys.executable, "-m", "celery", "-A", "project", "worker", "--pool=solo"]
        args += ["-Q", queue, "-n", self.name, "--loglevel=INFO"]
        super().__init__(self.name.split("@")[0], args, base_env(**extra), logs)

    def start(self) -> None:
        super().start()
        self.wait_ready(self.name)


class Agent(Process):
    """`manage.py run_agent` on the libvirt test driver (a Celery worker on host.<name>)."""

    def __init__(self, name: str, zone: str, uri: str, logs: Path, **env: str):
        self.name = name
        args = [sys.executable, "manage.py", "run_agent", "--name", name, "--zone", zone]
        args += ["--libvirt-uri", uri, "--loglevel", "INFO"]
        extra = {"STENCIL_POOL_COPY_LEASE_SECONDS": "2", **env}
        super().__init__(f"agent-{name}", args, base_env(**extra), logs)

    def start(self) -> None:
        super().start()
        self.wait_ready(f"agent-{self.name}@{socket.gethostname()}")


class PrivateRedis(Process):
    """A Redis of this test only (nothing kept on disk), so it can be restarted freely."""

    def __init__(self, logs: Path):
        self.port = free_port()
        args = [shutil.which("redis-server") or "redis-server", "--port", str(self.port)]
        args += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__(f"redis-{self.port}", args, dict(os.environ), logs)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()
        wait_until(self._answers, timeout=10, what="the private redis", logs=self.tail)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


# A scriptable HTTP server ---------------------------------------------------------------------


@dataclass
class Fault:
    """How one request is answered. kind: ok | status | stall | truncate | reset.

    `after` bytes of the body are sent before a stall/truncate/reset; `chunk` and `delay` pace
    the body (a slow server); `seconds` is how long a stall lasts."""

    kind: str = "ok"
    status: int = 500
    after: int = 0
    chunk: int = 256 * 1024
    delay: float = 0.0
    seconds: float = 30.0


@dataclass
class Seen:
    path: str
    range: str
    fault: str


@dataclass
class FaultServer:
    """Serves `files` (path -> bytes) with Accept-Ranges and strong ETags; each request takes
    the next Fault of its path's plan (then `default`). `seen` records every request."""

    files: dict[str, bytes] = field(default_factory=dict)
    plans: dict[str, list[Fault]] = field(default_factory=dict)
    default: Fault = field(default_factory=Fault)
    seen: list[Seen] = field(default_factory=list)
    ranges: bool = True

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer._answer(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self._stop.set()  # stalled handlers give up
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next(self, path: str) -> Fault:
        with self._lock:
            plan = self.plans.get(path)
            return plan.pop(0) if plan else self.default

    def _answer(self, handler) -> None:
        path = handler.path.split("?")[0]
        data = self.files.get(path)
        fault = self._next(path)
        asked = handler.headers.get("Range", "")
        with self._lock:
            self.seen.append(Seen(path=path, range=asked, fault=fault.kind))
        if data is None:
            return self._plain(handler, 404, b"not found")
        if fault.kind == "status":
            return self._plain(handler, fault.status, f"fault {fault.status}".encode())
        start = 0
        if asked.startswith("bytes=") and self.ranges:
            start = int(asked[6:].split("-")[0])
        handler.send_response(206 if start else 200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("ETag", f'"{len(data)}"')
        if self.ranges:
            handler.send_header("Accept-Ranges", "bytes")
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.send_header("Connection", "close")
        handler.end_headers()
        body = data[start:]
        limit = fault.after if fault.kind in ("stall", "truncate", "reset") else len(body)
        try:
            sent = 0
            while sent < min(limit, len(body)) and not self._stop.is_set():
                piece = body[sent : min(limit, sent + fault.chunk)]
                handler.wfile.write(piece)
                handler.wfile.flush()
                sent += len(piece)
                if fault.delay:
                    time.sleep(fault.delay)
            if fault.kind == "stall":
                self._stop.wait(fault.seconds)
            elif fault.kind == "reset":
                # RST instead of FIN: SO_LINGER with a zero timeout, then close at once (the
                # server's own shutdown_request would send a FIN first).
                handler.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                handler.wfile.close()
                handler.rfile.close()
                handler.connection.close()
        except OSError:
            pass  # the client went away (a killed worker)
        handler.close_connection = True

    @staticmethod
    def _plain(handler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True


def qcow2_image(path: Path, virtual: str = "64M", written: str = "8M") -> bytes:
    """A real qcow2 image with `written` bytes of data (incompressible enough to stay large)."""
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), virtual], check=True, capture_output=True
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {written}", str(path)],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


def part_files(*folders: Path) -> list[str]:
    """Every temporary (partial) file under the folders."""
    return sorted(
        str(p) for folder in folders for p in Path(folder).rglob("*") if ".part" in p.name
    )


class Web(Process):
    """`manage.py runserver` on a free port (no reloader), for submissions from outside."""

    def __init__(self, logs: Path, **env: str):
        self.port = free_port()
        args = [sys.executable, "manage.py", "runserver", "--insecure", "--noreload"]
        args.append(f"127.0.0.1:{self.port}")
        super().__init__(f"web-{self.port}", args, base_env(**env), logs)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()

        def listening() -> bool:
            if not self.alive():
                return True
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            return False

        wait_until(listening, what="the web process to listen", logs=self.tail)
        assert self.alive(), self.tail()

    def call(self, method: str, path: str, token: str, body=None) -> tuple[int, object]:
        import json
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
