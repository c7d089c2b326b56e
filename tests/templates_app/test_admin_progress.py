"""The staff-only progress endpoint that static/stencil/progress.js polls, and the pages that
use it: constant query count, infrastructure hidden from tenants."""

import pytest
from django.urls import reverse

from agents_app.agent import heartbeat
from agents_app.choices import PoolCopyState, VmState
from agents_app.models import PrimaryPool, TemplatePoolRef, VirtualMachine
from templates_app.choices import DownloadState, StoreRefState
from templates_app.models import TemplateStoreRef

pytestmark = pytest.mark.django_db

PROGRESS = "/admin/stencil/progress/"


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def downloading(template, *, percent: int, done: int):
    TemplateStoreRef.objects.filter(template=template).update(
        download_state=DownloadState.DOWNLOAD_IN_PROGRESS,
        download_percent=percent,
        downloaded_bytes=done,
    )
    return template.store_refs.get()


def test_store_copy_progress_with_its_total(staff, register):
    ref = downloading(register(), percent=25, done=1000)

    answer = staff.get(PROGRESS, {"store": f"{ref.pk},nonsense"}).json()

    assert answer == {
        "store": {
            str(ref.pk): {
                "percent": 25,
                "done_bytes": 1000,
                "total_bytes": 4000,
                "active": True,
                "state": "DOWNLOAD_IN_PROGRESS",
                "error": "",
            }
        }
    }


def test_pool_copy_and_deploying_vm_progress(staff, register, zone, account, user):
    from agents_app import services

    template = register()
    TemplateStoreRef.objects.filter(template=template).update(
        state=StoreRefState.READY, download_state=DownloadState.DOWNLOADED, physical_size=2000
    )
    host = heartbeat.host_register(name="kvm-1", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(zone=zone, name="p", libvirt_pool_name="p", path="/srv/p")
    pool.hosts.add(host)
    vm = services.vm_deploy(
        name="web", template_id=template.pk, zone=zone, account=account, actor=user
    )
    ref = TemplatePoolRef.objects.create(
        template=template, pool=pool, state=PoolCopyState.DOWNLOAD_IN_PROGRESS, download_percent=50
    )

    answer = staff.get(PROGRESS, {"pool": ref.pk, "vm": vm.pk}).json()

    assert answer["pool"][str(ref.pk)] == {
        "percent": 50,
        "done_bytes": 1000,
        "total_bytes": 2000,
        "active": True,
        "state": "DOWNLOAD_IN_PROGRESS",
        "error": "",
    }
    assert answer["vm"][str(vm.pk)]["percent"] == 50
    assert answer["vm"][str(vm.pk)]["active"] is True
    VirtualMachine.objects.filter(pk=vm.pk).update(state=VmState.RUNNING)
    assert staff.get(PROGRESS, {"vm": vm.pk}).json()["vm"][str(vm.pk)]["active"] is False


def test_tenants_and_strangers_get_a_403(client, user, register):
    ref = downloading(register(), percent=1, done=1)

    assert client.get(PROGRESS, {"store": ref.pk}).status_code == 403
    client.force_login(user)
    assert client.get(PROGRESS, {"store": ref.pk}).status_code == 403


def test_the_endpoint_costs_one_query_per_kind(
    staff, register, django_assert_max_num_queries, django_assert_num_queries
):
    refs = [downloading(register(name=f"t{i}"), percent=10, done=10) for i in range(20)]
    ids = ",".join(str(ref.pk) for ref in refs)

    # Session + user, then one query per kind asked, for 1 row or 20.
    with django_assert_num_queries(3):
        one = staff.get(PROGRESS, {"store": refs[0].pk})
    with django_assert_num_queries(4):
        many = staff.get(PROGRESS, {"store": ids, "pool": "1,2,3"})

    assert len(one.json()["store"]) == 1
    assert len(many.json()["store"]) == 20


def test_pages_with_work_in_flight_carry_the_script_and_the_live_bars(staff, register):
    template = register()
    ref = downloading(template, percent=40, done=400)

    page = staff.get(reverse("admin:templates_app_template_change", args=[template.pk]))
    listing = staff.get(reverse("admin:templates_app_templatestoreref_changelist"))

    for response in (page, listing):
        html = response.content.decode()
        assert "/static/stencil/progress.js" in html
        assert f'data-stencil-progress="store:{ref.pk}" data-active="1"' in html
        assert 'data-progress-url="/admin/stencil/progress/"' in html
