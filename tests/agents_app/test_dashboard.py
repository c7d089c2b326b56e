"""The console's dashboard (the admin index): what an operator sees first, in few queries."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from agents_app.agent import heartbeat
from agents_app.models import PrimaryPool, TemplatePoolRef
from templates_app.choices import DownloadState, StoreRefState
from templates_app.models import TemplateStoreRef

pytestmark = pytest.mark.django_db

MB = 1024 * 1024


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def downloaded(template, store, size: int) -> TemplateStoreRef:
    """The copy as the storage worker leaves it once the bytes are on disk."""
    path = f"{store.path}/{template.unique_name}.qcow2"
    with open(path, "wb") as image:
        image.write(b"\0" * size)
    TemplateStoreRef.objects.filter(template=template, store=store).update(
        download_state=DownloadState.DOWNLOADED,
        state=StoreRefState.READY,
        download_percent=100,
        physical_size=size,
        size=size * 4,
        install_path=path,
    )
    return TemplateStoreRef.objects.get(template=template, store=store)


@pytest.fixture
def cloud(register, store, zone):
    ready = register(name="ubuntu")
    downloaded(ready, store, 3 * MB)
    register(name="fedora")  # still downloading
    TemplateStoreRef.objects.filter(template__name="fedora").update(
        download_state=DownloadState.DOWNLOAD_IN_PROGRESS, download_percent=42
    )
    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(
        zone=zone,
        name="pool-1",
        libvirt_pool_name="pool-1",
        path="/srv/pools/pool-1",
        capacity_bytes=100 * MB,
        used_bytes=25 * MB,  # libvirt's allocation, as the agent reported it
    )
    pool.hosts.add(host)
    TemplatePoolRef.objects.create(
        template=ready, pool=pool, state="DOWNLOADED", physical_size=2 * MB
    )
    return ready


def test_dashboard_shows_templates_copies_hosts_storage_and_events(staff, cloud, store):
    response = staff.get(reverse("admin:index"))

    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r"<title>\s*Dashboard \| Stencil\s*</title>", html)
    figures = response.context["dashboard"]
    assert {row["state"]: row["count"] for row in figures["templates"]}["ACTIVE"] == 2
    assert figures["readiness"] == {"ready": 1, "not_ready": 1}
    assert [c.template.name for c in figures["store_downloading"]] == ["fedora"]
    assert 'value="42"' in html and "fedora v1" in html
    assert "kvm-1" in html and "Last heartbeat" in html
    # Usage is never 0 bytes with files on disk: statvfs of the store's path, and the copies.
    (store_bar,) = figures["stores"]
    assert store_bar.capacity > 0 and store_bar.used > 0 and store_bar.stencil_bytes == 3 * MB
    (pool_bar,) = figures["pools"]
    assert (pool_bar.capacity, pool_bar.used, pool_bar.percent) == (100 * MB, 25 * MB, 25)
    assert pool_bar.stencil_bytes == 2 * MB
    assert "25.0\xa0MB used of 100.0\xa0MB (25%)" in html
    assert figures["zones"] == [{"zone": "zone-a", "bytes": 3 * MB, "copies": 1, "percent": 100}]
    assert "registered" in html  # the last events


def test_dashboard_links_to_filtered_lists(staff, cloud):
    html = staff.get(reverse("admin:index")).content.decode()

    assert reverse("admin:templates_app_templatestoreref_changelist") + "?status=failed" in html
    assert reverse("admin:agents_app_templatepoolref_changelist") + "?status=stuck" in html
    assert reverse("admin:agents_app_host_changelist") + "?state__exact=DOWN" in html


def test_dashboard_query_count_does_not_grow_with_the_cloud(staff, register, store, zone, cloud):
    with CaptureQueriesContext(connection) as small:
        staff.get(reverse("admin:index"))
    for n in range(5):
        downloaded(register(name=f"extra-{n}"), store, MB)
        heartbeat.host_register(name=f"kvm-{n + 2}", zone=zone, libvirt_uri="test:///default")

    with CaptureQueriesContext(connection) as large:
        staff.get(reverse("admin:index"))

    assert len(large) == len(small) <= 25


def test_store_pool_and_host_lists_show_usage_and_what_they_hold(staff, cloud, store):
    stores = staff.get(reverse("admin:templates_app_imagestore_changelist")).content.decode()
    assert re.search(r"[\d.]+\xa0[KMGT]B of [\d.]+\xa0[KMGT]B \(\d+%\)", stores), "statvfs usage"
    assert "3.0\xa0MB" in stores  # Stencil's copies on the store: not 0 bytes
    assert f"?store__id__exact={store.pk}" in stores

    pools = staff.get(reverse("admin:agents_app_primarypool_changelist"))
    (pool,) = pools.context["cl"].result_list
    assert (pool.copy_count, pool.vms_on_pool) == (1, 0)
    hosts = staff.get(reverse("admin:agents_app_host_changelist"))
    assert [h.vms_on_host for h in hosts.context["cl"].result_list] == [0]


@pytest.mark.parametrize(
    "model",
    [
        "templates_app_template",
        "templates_app_imagestore",
        "templates_app_templatestoreref",
        "agents_app_host",
        "agents_app_primarypool",
        "agents_app_templatepoolref",
        "agents_app_virtualmachine",
    ],
)
def test_changelists_make_a_constant_number_of_queries(staff, register, store, zone, cloud, model):
    url = reverse(f"admin:{model}_changelist")
    with CaptureQueriesContext(connection) as small:
        assert staff.get(url).status_code == 200
    for n in range(4):
        downloaded(register(name=f"extra-{n}"), store, MB)
        heartbeat.host_register(name=f"kvm-{n + 2}", zone=zone, libvirt_uri="test:///default")

    with CaptureQueriesContext(connection) as large:
        staff.get(url)

    assert len(large) == len(small)
