"""Shared fixtures. The suite runs on PostgreSQL only: row locks and races need the real thing."""

import os
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from agents_app import services as vm_services
from templates_app import services

from .templates_app.factories import AccountFactory, ImageStoreFactory, UserFactory, ZoneFactory


def _ephemeral_ports() -> str:
    """The range the kernel picks a port-0 bind from: where pytest-httpserver, trustme servers
    and the tests' own sockets listen (Linux: /proc/sys/net/ipv4/ip_local_port_range)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except OSError:
        low, high = "32768", "60999"  # Linux's default
    return f"{low}-{high}"


# Production allows ports 80 and 443 only (plus STENCIL_URL_ALLOWED_PORTS); the test servers
# listen on random high ports, so the tests allow exactly that range. Set in the environment
# too: the worker and agent processes the tests start inherit it.
TEST_ALLOWED_PORTS = _ephemeral_ports()
os.environ["STENCIL_URL_ALLOWED_PORTS"] = TEST_ALLOWED_PORTS


def pytest_configure(config):
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise pytest.UsageError(
            f"the test suite needs PostgreSQL (DATABASE_URL=postgres://...), not {engine}; "
            "run it with `make test`"
        )


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # The user factories hash passwords; PBKDF2 would spend most of each test's setup on it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def direct_download_url_check_off(settings):
    """Registering a direct-download template asks an Up host's agent to check the URL; tests
    that only need such a template skip that round trip. tests/agents_app/test_agent_worker.py
    turns it on and runs it against a real agent."""
    settings.STENCIL_DIRECT_DOWNLOAD_URL_CHECK = False


@pytest.fixture(autouse=True)
def test_server_ports_allowed(settings):
    """The test servers' ports (TEST_ALLOWED_PORTS); tests of the port rule set their own."""
    settings.STENCIL_URL_ALLOWED_PORTS = [TEST_ALLOWED_PORTS]


@pytest.fixture(autouse=True)
def gc_grace_off(settings):
    """Most tests expect the sweep to remove a deleted, unused template at once (the behaviour
    before the grace existed); tests of the grace set STENCIL_GC_GRACE_SECONDS themselves."""
    settings.STENCIL_GC_GRACE_SECONDS = 0


@pytest.fixture
def zone(db):
    return ZoneFactory(name="zone-a")


@pytest.fixture
def store(zone, tmp_path):
    path = tmp_path / "store-a"
    path.mkdir()
    return ImageStoreFactory(zone=zone, name="store-a", path=str(path))


@pytest.fixture
def account(db):
    return AccountFactory(name="acme")


@pytest.fixture
def user(account):
    member = UserFactory(username="alice")
    account.members.add(member)
    return member


@pytest.fixture
def other_account(db):
    return AccountFactory(name="globex")


@pytest.fixture
def other_user(other_account):
    member = UserFactory(username="bob")
    other_account.members.add(member)
    return member


@pytest.fixture
def admin_user(db):
    staff = UserFactory(username="root", is_staff=True, is_superuser=True)
    return staff


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def other_api(other_user):
    client = APIClient()
    client.force_authenticate(other_user)
    return client


@pytest.fixture
def admin_api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


@pytest.fixture
def register(store, account, user):
    """Register a template through the service, as the API would."""

    def _register(**overrides):
        params = {
            "account": account,
            "actor": user,
            "name": "debian-12",
            "image_format": "QCOW2",
            "url": "https://mirror.example/debian-12.qcow2",
            "zones": [store.zone],
        }
        params.update(overrides)
        return services.template_register(**params)

    return _register


@pytest.fixture
def make_vm(account, user, zone):
    def _make_vm(template, name="vm-1"):
        return vm_services.vm_create(
            name=name, template_id=template.pk, zone=zone, account=account, actor=user
        )

    return _make_vm


@pytest.fixture(scope="session", autouse=True)
def private_celery_queue(worker_id):
    """Tasks that tests enqueue go to the real broker, on a queue of this test process only."""
    from project.celery import app

    queue = f"stencil-test-{worker_id}-{os.getpid()}"
    app.conf.task_default_queue = queue
    app.conf.task_routes = {"*": {"queue": queue}}
    yield queue
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(queue)


def pytest_sessionfinish(session, exitstatus):
    """After every xdist worker is done, empty the test broker database (Redis db of tests).

    Transactional tests enqueue real tasks (downloads, deploys on host queues) that no worker
    consumes; they must not pile up from run to run.
    """
    if hasattr(session.config, "workerinput"):
        return
    url = settings.CELERY_BROKER_URL
    if url.startswith("redis://") and url.rstrip("/").rsplit("/", 1)[-1].isdigit():
        import redis

        redis.Redis.from_url(url).flushdb()


@pytest.fixture
def sweeps_run_here(monkeypatch, django_capture_on_commit_callbacks):
    """Queued GC sweeps run in this process when their transaction commits (no worker needed).

    `with sweeps_run_here(): ...` runs the on-commit callbacks at the end of the block, and the
    sweep task they send runs eagerly instead of going to the broker.
    """
    from templates_app import tasks

    monkeypatch.setattr(
        tasks.gc_sweep_run_task,
        "delay",
        lambda run_id: tasks.gc_sweep_run_task.apply(args=[run_id], throw=True),
    )
    return lambda: django_capture_on_commit_callbacks(execute=True)
