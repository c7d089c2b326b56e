"""`make run`'s demo: createdemo makes a KVM host on the libvirt test driver with a real pool."""

import re
import urllib.parse
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from agents_app.agent import virt
from agents_app.choices import HostState
from agents_app.models import Host, PrimaryPool

pytestmark = pytest.mark.django_db(transaction=True)


def run_createdemo() -> str:
    out = StringIO()
    call_command("createdemo", stdout=out)
    return out.getvalue()


def test_createdemo_makes_the_demo_host_on_the_test_driver(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.STENCIL_IMAGE_STORE_ROOT = tmp_path / "stores"
    first = run_createdemo()
    second = run_createdemo()

    passwords = [re.search(r"password '([^']+)'", out).group(1) for out in (first, second)]
    assert passwords[0] == passwords[1] == (tmp_path / "admin-password").read_text().strip()

    host = Host.objects.get()
    assert (host.name, host.zone.name, host.state) == ("demo-kvm", "demo", HostState.UP)
    node_xml = tmp_path / "libvirt" / "demo-node.xml"
    assert host.libvirt_uri.startswith("test:///")
    assert Path(urllib.parse.unquote(host.libvirt_uri.removeprefix("test://"))) == node_xml
    assert node_xml.is_file()
    pool_dir = tmp_path / "pools" / "demo-pool"
    assert pool_dir.is_dir()

    pool = PrimaryPool.objects.get()
    assert (pool.name, pool.zone, pool.libvirt_pool_name, pool.path) == (
        "demo-pool",
        host.zone,
        "demo-pool",
        str(pool_dir),
    )
    assert list(pool.hosts.all()) == [host]

    for out in (first, second):
        assert f"Host 'demo-kvm' (UP) on {host.libvirt_uri}" in out
        assert f"run_agent --name demo-kvm --zone demo --libvirt-uri {host.libvirt_uri}" in out

    try:
        conn = virt.connection(host.libvirt_uri)
        assert virt.pool_info(conn, "demo-pool").path == str(pool_dir)
    finally:
        virt.close_connections(host.libvirt_uri)


def test_procfile_web_is_gunicorn_serving_the_console_and_its_static_files(tmp_path):
    """`make run`'s web process, as the Procfile starts it: gunicorn, with WhiteNoise serving
    the theme's CSS from the package (no collectstatic, no CDN)."""
    import os
    import shlex
    import socket
    import subprocess
    import time
    import urllib.request

    from django.db import connection

    line = next(row for row in Path("Procfile").read_text().splitlines() if row.startswith("web:"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = shlex.split(line.removeprefix("web:").replace("${STENCIL_PORT:-8000}", str(port)))
    assert Path(command[0]).name == "gunicorn"
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "STENCIL_DATA_DIR": str(tmp_path),
    }
    web = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                login = urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=5)
                break
            except OSError:
                assert web.poll() is None, web.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "gunicorn did not answer within 60 s"
                time.sleep(0.5)
        page = login.read().decode()
        assert login.status == 200 and "Stencil" in page
        css = re.search(r'href="(/static/unfold/css/styles\.css[^"]*)"', page).group(1)
        style = urllib.request.urlopen(f"http://127.0.0.1:{port}{css}", timeout=5)
        assert style.status == 200 and style.headers["Content-Type"].startswith("text/css")
        assert len(style.read()) > 10_000
    finally:
        web.terminate()
        web.wait(timeout=30)
