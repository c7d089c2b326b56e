"""`make run`'s processes on the embedded default (SQLite + filesystem broker) under load.

The suite itself runs on PostgreSQL; this test starts web, worker, beat and the demo agent as
the Procfile does, on their own SQLite file and filesystem broker in a temporary data dir, and
drives them through the HTTP API: 20 concurrent deploys, 4 downloads and a GC sweep at once.
Nothing may answer "database is locked" (WAL, busy timeout, IMMEDIATE transactions, and no slow
work inside a transaction), and nothing may stay stuck.
"""

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

pytestmark = [pytest.mark.worker, pytest.mark.xdist_group("sqlite-processes")]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEPLOYS = 20
DOWNLOADS = 5
DEADLINE = 75  # seconds for the whole scenario once the processes are up
# runserver listens with a backlog of 10 (django.core.servers.basehttp.WSGIServer
# .request_queue_size): a burst of 25 new connections overflows it, and the kernel's SYN-cookie
# path then now and then resets one. The dev server's limit, not the database's: the 25 requests
# start at once, with at most 8 connections open at a time.
CONNECTIONS = threading.BoundedSemaphore(8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def procfile() -> dict[str, str]:
    """The Procfile's commands, with `.venv/bin/` pointing at the running interpreter's."""
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = command.strip().replace(".venv/bin/", f"{BIN}/")
    return commands


class Processes:
    """Each process in its own session (process group), stdout and stderr to <logs>/<name>.log."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs = env, logs
        self.running: dict[str, subprocess.Popen] = {}

    def run(self, name: str, args: list[str]) -> str:
        done = subprocess.run(
            args, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        (self.logs / f"{name}.log").write_text(done.stdout + done.stderr)
        assert done.returncode == 0, f"{name} failed:\n{done.stdout}{done.stderr}"
        return done.stdout

    def start(self, name: str, command: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.running[name] = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.running.items() if p.poll() is not None}
        assert not dead, f"processes exited: {dead}\n{self.tails()}"

    def tails(self, lines: int = 40) -> str:
        out = []
        for log in sorted(self.logs.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {log.name} (last {len(tail)} lines) -----\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        # SIGTERM to each leader (as honcho does: the workers shut their pools down warmly),
        # then SIGKILL to each whole group for whatever is left.
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # The whole group: the worker's pool children, qemu-img, anything left.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for(what: str, probe, processes: Processes, deadline: float, interval: float = 0.25):
    """probe() -> (done, seen). Fails at the deadline with what was last seen and the logs."""
    seen = None
    while True:
        processes.check_alive()
        try:
            done, seen = probe()
        except OSError as exc:  # the web process not listening yet, or an HTTP error
            done, seen = False, f"{type(exc).__name__}: {exc}"
        if done:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}; last seen: {seen}\n{processes.tails()}"
            )
        time.sleep(interval)


class Api:
    """The HTTP API with the demo admin's token (urllib: the project has no HTTP client dep)."""

    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body=None) -> tuple[int, object]:
        request = urllib.request.Request(
            f"{self.base}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with CONNECTIONS, urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def get(self, path: str):
        status, body = self.call("GET", path)
        if status != 200:
            raise OSError(f"GET {path}: {status} {body}")
        return body

    def post(self, path: str, body) -> tuple[int, object]:
        return self.call("POST", path, body)


def qcow2_images(tmp_path: Path) -> list[bytes]:
    images = []
    for i in range(DOWNLOADS):
        path = tmp_path / f"image-{i}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{16 + i}M"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P {0x10 + i} 0 256k", str(path)],
            check=True,
            capture_output=True,
        )
        images.append(path.read_bytes())
    return images


def slowly(data: bytes, chunk: int = 32 * 1024, pause: float = 0.25):
    """Serve in chunks with pauses, so the downloads are still running during the deploys."""

    def handler(request):
        def chunks():
            for start in range(0, len(data), chunk):
                time.sleep(pause)
                yield data[start : start + chunk]

        return Response(
            chunks(),
            headers={"Content-Length": str(len(data))},
            content_type="application/octet-stream",
        )

    return handler


def test_make_run_processes_on_sqlite_survive_concurrent_deploys_downloads_and_a_sweep(
    tmp_path,
):
    data_dir = tmp_path / "var"
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STENCIL_", "CELERY_", "DATABASE_", "DJANGO_"))
    }
    uri = "test://" + urllib.parse.quote(str(data_dir / "libvirt" / "demo-node.xml"), safe="/")
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "STENCIL_ENV": "development",  # as scripts/run.sh exports it
            "DATABASE_URL": f"sqlite:///{data_dir / 'stencil.sqlite3'}",
            "STENCIL_DATA_DIR": str(data_dir),
            "STENCIL_URL_ALLOW_LOOPBACK": "true",
            "STENCIL_URL_ALLOWED_PORTS": os.environ["STENCIL_URL_ALLOWED_PORTS"],
            "STENCIL_HEARTBEAT_SECONDS": "2",
            # migrate stores it in beat's schedule: beat sweeps during the scenario too.
            "STENCIL_GC_INTERVAL_SECONDS": "3",
            "STENCIL_PORT": str(port),
            "STENCIL_DEMO_LIBVIRT_URI": uri,
            "PYTHONUNBUFFERED": "1",
        }
    )
    images = qcow2_images(tmp_path)
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request("/image-0.qcow2").respond_with_data(images[0])
    for i in range(1, DOWNLOADS):
        server.expect_request(f"/image-{i}.qcow2").respond_with_handler(slowly(images[i]))
    server.start()
    processes = Processes(env, logs)
    try:
        python = str(BIN / "python")
        processes.run("migrate", [python, "manage.py", "migrate", "--noinput"])
        demo = processes.run(
            "createdemo",
            [python, "manage.py", "createdemo", "--base-url", f"http://127.0.0.1:{port}"],
        )
        assert f"--libvirt-uri {uri}" in demo, demo
        token = re.search(r"API token: (\w+)", demo).group(1)
        commands = procfile()
        assert set(commands) == {"web", "worker", "beat", "agent"}, commands
        for name, command in commands.items():
            processes.start(name, command)
        scenario(processes, port, token, server, images)
    finally:
        processes.stop()
        server.clear()
        if server.is_running():
            server.stop()

    text = {log.name: log.read_text(errors="replace") for log in logs.glob("*.log")}
    locked = [name for name, body in text.items() if "database is locked" in body]
    assert not locked, f"'database is locked' in {locked}\n{processes.tails(80)}"
    tracebacks = [name for name, body in text.items() if "Traceback" in body]
    assert not tracebacks, f"tracebacks in {tracebacks}\n{processes.tails(80)}"
    assert re.search(r"gc_sweep_task\[[-\w]+\] succeeded", text["worker.log"]), (
        f"beat's periodic sweep never ran\n{processes.tails(80)}"
    )


def scenario(processes: Processes, port: int, token: str, server: HTTPServer, images):
    api = Api(f"http://127.0.0.1:{port}/api/v1", token)
    get = api.get
    deadline = time.monotonic() + DEADLINE

    zones = wait_for(
        "the web process",
        lambda: (True, get("/zones/")),
        processes,
        deadline,
    )
    zone = next(z["id"] for z in zones["results"] if z["name"] == "demo")
    wait_for(
        "host demo-kvm to be UP (its agent heartbeats)",
        lambda: (
            (hosts := {h["name"]: h["state"] for h in get("/hosts/")["results"]}).get("demo-kvm")
            == "UP",
            hosts,
        ),
        processes,
        deadline,
    )

    def register(i: int) -> str:
        status, body = api.post(
            "/templates/",
            {
                "name": f"sqlite-{i}",
                "format": "QCOW2",
                "url": server.url_for(f"/image-{i}.qcow2"),
                "checksum": "{SHA-256}" + hashlib.sha256(images[i]).hexdigest(),
                "zones": [zone],
            },
        )
        assert status == 201, f"registering sqlite-{i}: {status} {body}\n{processes.tails()}"
        return body["id"]

    def copies(template_ids) -> dict[str, list[tuple[str, str]]]:
        out = {}
        for template_id in template_ids:
            body = get(f"/templates/{template_id}/")
            out[body["name"]] = [
                (c["download_state"], c["state"], c["error_text"]) for c in body["copies"]
            ]
        return out

    def all_downloaded(template_ids):
        seen = copies(template_ids)
        done = all(
            refs and all(r[:2] == ("DOWNLOADED", "READY") for r in refs) for refs in seen.values()
        )
        return done, seen

    first = register(0)
    wait_for("the first template's copy", lambda: all_downloaded([first]), processes, deadline)

    # A direct-download registration waits for the agent's URL check, whose result the agent
    # writes to the same database: the web must not hold the write lock while it waits.
    status, body = api.post(
        "/templates/",
        {
            "name": "sqlite-direct",
            "format": "QCOW2",
            "url": server.url_for("/image-0.qcow2"),
            "checksum": "{SHA-256}" + hashlib.sha256(images[0]).hexdigest(),
            "zones": [zone],
            "direct_download": True,
        },
    )
    assert status == 201, f"direct-download registration: {status} {body}\n{processes.tails()}"

    def deploy(i: int):
        return api.post(
            "/vms/", {"name": f"vm-{i}", "template": first, "zone": zone, "deploy": True}
        )

    def sweep():
        return api.post("/gc/sweep/", {"dry_run": False})

    start = threading.Barrier(DEPLOYS + DOWNLOADS)

    def at_once(job, *args):
        start.wait(timeout=30)
        return job(*args)

    with ThreadPoolExecutor(max_workers=DEPLOYS + DOWNLOADS) as pool:
        registering = [pool.submit(at_once, register, i) for i in range(1, DOWNLOADS)]
        deploying = [pool.submit(at_once, deploy, i) for i in range(DEPLOYS)]
        sweeping = pool.submit(at_once, sweep)
        others = [f.result() for f in registering]
        deployed = [f.result() for f in deploying]
        swept = sweeping.result()

    bad = [(status, body) for status, body in deployed if status != 201]
    assert not bad, f"deploys refused: {bad}\n{processes.tails()}"
    assert swept[0] in (200, 202), f"sweep answered {swept}\n{processes.tails()}"
    vm_ids = {body["id"] for _, body in deployed}

    def vms_running():
        listing = get("/vms/?page_size=500")["results"]
        states = {
            vm["name"]: (vm["state"], vm["error_text"]) for vm in listing if vm["id"] in vm_ids
        }
        done = len(states) == DEPLOYS and all(s == "RUNNING" for s, _ in states.values())
        return done, states

    wait_for(f"{DEPLOYS} VMs to be RUNNING", vms_running, processes, deadline)
    wait_for(
        f"{DOWNLOADS} store copies to be DOWNLOADED/READY",
        lambda: all_downloaded([first, *others]),
        processes,
        deadline,
    )
    check_listing(get, [first, *others])


def check_listing(get, template_ids: list[str]) -> None:
    """The listing's compiled statements on SQLite (text UUIDs and datetimes, integer
    booleans): each listed row is the template's own answer without its copies, page numbers
    and cursor pages agree, twice over (the second time from compiled statements)."""
    for _ in range(2):
        paged = get("/templates/?page_size=500")
        assert paged["count_is_estimate"] is False, paged
        listed = {row["id"]: row for row in paged["results"]}
        walked, cursor = [], ""
        while cursor is not None:
            body = get(f"/templates/?page_size=2&cursor={urllib.parse.quote(cursor)}")
            walked += [row["id"] for row in body["results"]]
            cursor = body["next_cursor"]
        assert walked == list(listed), (walked, list(listed))
        for template_id in template_ids:
            detail = get(f"/templates/{template_id}/")
            detail.pop("copies")
            assert listed[template_id] == detail, (listed[template_id], detail)
            flags = ("is_public", "is_featured", "cross_zones", "direct_download")
            assert all(type(listed[template_id][flag]) is bool for flag in flags)  # 0 == False
        assert listed[template_ids[0]]["references"] == DEPLOYS
