"""Case 4: the GC sweep's PostgreSQL connection killed in the middle of a sweep.

`manage.py gc_sweep` runs as a subprocess, many small batches, its connections tagged with an
application_name of this test; the test terminates exactly that backend once some batches have
committed. The sweep dies with the connection (its advisory lock goes with the session); the
next sweep finishes the job, and no referenced template is ever REMOVED.
"""

import subprocess
import sys
import time
import uuid

import pytest
from django.db import connection

from agents_app.models import VirtualMachine
from templates_app.models import Template

from .conftest import assert_nothing_stuck_or_partial
from .processes import ROOT, base_env, database_url, wait_until

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("faults"),
]

TEMPLATES = 300
USED_EVERY = 4  # every 4th template has a (stopped) VM: a live reference


def backends_of(application_name: str) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> "
            "pg_backend_pid()",
            [application_name],
        )
        return [row[0] for row in cursor.fetchall()]


def sweep(application_name: str) -> subprocess.Popen:
    env = base_env(DATABASE_URL=database_url(application_name), STENCIL_GC_BATCH_SIZE="3")
    return subprocess.Popen(
        [sys.executable, "manage.py", "gc_sweep"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_sweep_whose_connection_is_killed_is_finished_by_the_next(account, zone):
    templates = Template.objects.bulk_create(
        Template(
            account=account,
            name=f"sweep-{n}",
            unique_name=f"fault-sweep-{n:05d}",
            url="http://images.example.invalid/x.qcow2",
            state="INACTIVE",
        )
        for n in range(TEMPLATES)
    )
    used = [t for n, t in enumerate(templates) if n % USED_EVERY == 0]
    VirtualMachine.objects.bulk_create(
        VirtualMachine(name=f"vm-{t.pk}", account=account, template=t, zone=zone, state="STOPPED")
        for t in used
    )
    removable = TEMPLATES - len(used)

    tag = f"stencil-faults-sweep-{uuid.uuid4().hex[:8]}"
    first = sweep(tag)
    wait_until(
        lambda: first.poll() is not None or Template.objects.filter(state="REMOVED").exists(),
        what="the first sweep to commit a batch",
    )
    pids = backends_of(tag)
    assert pids, "the sweep's backend, by its application_name"
    with connection.cursor() as cursor:
        for pid in pids:  # only the backend of the sweep this test started
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    output, _ = first.communicate(timeout=30)
    removed_then = Template.objects.filter(state="REMOVED").count()
    assert first.returncode != 0, output
    assert "terminating connection" in output or "server closed the connection" in output, output
    assert 0 < removed_then < removable, "killed in the middle of the sweep"

    started = time.monotonic()
    second = sweep(f"{tag}-2")
    output, _ = second.communicate(timeout=60)
    assert second.returncode == 0, output
    assert f"removed {removable - removed_then} template(s)" in output, output
    assert time.monotonic() - started < 30

    assert Template.objects.filter(state="REMOVED").count() == removable
    assert not Template.objects.filter(pk__in=[t.pk for t in used], state="REMOVED").exists()
    assert Template.objects.filter(pk__in=[t.pk for t in used], state="INACTIVE").count() == len(
        used
    )
    assert_nothing_stuck_or_partial()
