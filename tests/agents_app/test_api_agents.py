"""Hosts, primary pools and template copies on pools through the API.

Hosts come from agents (host_register); copies are pinned by prepare and unpinned by operators.
The copy itself is tested in test_deploy.py: here the copy task is only recorded, not run.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.agent.tasks import pool_copy_task
from agents_app.host_services import hosts_mark_down
from agents_app.models import Host, PrimaryPool, TemplatePoolRef
from agents_app.pool_copies import pool_copy_set_pinned
from templates_app import services
from templates_app.models import Event, Template
from tests.templates_app.factories import ZoneFactory

pytestmark = pytest.mark.django_db

HOSTS = "/api/v1/hosts/"
POOLS = "/api/v1/primary-pools/"
COPIES = "/api/v1/pool-copies/"


def make_host(zone, name="kvm-1"):
    return heartbeat.host_register(name=name, zone=zone, libvirt_uri="test:///default")


def make_pool(zone, name="pool-1", hosts=()):
    pool = PrimaryPool.objects.create(
        zone=zone, name=name, libvirt_pool_name=name, path=f"/var/lib/stencil/{name}"
    )
    pool.hosts.set(hosts)
    return pool


@pytest.fixture
def host(zone):
    return make_host(zone)


@pytest.fixture
def pool(zone, host):
    return make_pool(zone, hosts=[host])


@pytest.fixture
def queued(monkeypatch):
    """The copy tasks sent after commit, recorded instead of going to a broker."""
    calls = []
    monkeypatch.setattr(
        pool_copy_task, "apply_async", lambda **kwargs: calls.append(kwargs), raising=False
    )
    return calls


def pools_payload(zone, **overrides) -> dict:
    payload = {
        "zone": str(zone.uuid),
        "name": "fast-ssd",
        "libvirt_pool_name": "fast-ssd",
        "path": "/srv/pools/fast-ssd",
    }
    payload.update(overrides)
    return payload


# Hosts -------------------------------------------------------------------------------------


def test_hosts_list_and_detail(admin_api, host, pool, zone):
    listed = admin_api.get(HOSTS).data["results"]
    assert [row["name"] for row in listed] == ["kvm-1"]

    detail = admin_api.get(f"{HOSTS}{host.uuid}/").json()
    assert detail["id"] == str(host.uuid)
    assert detail["zone"] == str(zone.uuid)
    assert detail["zone_name"] == "zone-a"
    assert detail["state"] == "UP"
    assert detail["libvirt_uri"] == "test:///default"
    assert detail["queue"] == "host.kvm-1"
    assert detail["pools"] == [str(pool.uuid)]
    assert detail["last_heartbeat_at"] is not None
    assert set(detail) >= {"address", "capabilities"}


def test_hosts_filters(admin_api, host, zone):
    make_host(ZoneFactory(name="zone-b"), name="kvm-b")
    Host.objects.filter(name="kvm-b").update(last_heartbeat_at=timezone.now() - timedelta(hours=1))
    hosts_mark_down(missed_after_seconds=90)

    def names(**query):
        return [h["name"] for h in admin_api.get(HOSTS, query).data["results"]]

    assert names(zone=str(zone.uuid)) == ["kvm-1"]
    assert names(state="DOWN") == ["kvm-b"]
    assert names(search="kvm-b") == ["kvm-b"]


def test_hosts_are_not_created_through_the_api(admin_api, zone):
    response = admin_api.post(HOSTS, {"name": "kvm-9", "zone": str(zone.uuid)}, format="json")
    assert response.status_code == 405


def test_maintenance_is_staff_only(api, host):
    assert api.post(f"{HOSTS}{host.uuid}/maintenance/").status_code == 403
    assert api.post(f"{HOSTS}{host.uuid}/maintenance-off/").status_code == 403


def test_maintenance_on_and_off(admin_api, host, admin_user):
    response = admin_api.post(f"{HOSTS}{host.uuid}/maintenance/")
    assert (response.status_code, response.data["state"]) == (200, "MAINTENANCE")
    # The agent keeps sending heartbeats: they do not bring a host out of maintenance.
    assert heartbeat.host_heartbeat(name="kvm-1").state == "MAINTENANCE"

    response = admin_api.post(f"{HOSTS}{host.uuid}/maintenance-off/")
    assert (response.status_code, response.data["state"]) == (200, "DISCONNECTED")
    assert heartbeat.host_heartbeat(name="kvm-1").state == "UP"

    events = Event.objects.filter(object_uuid=host.uuid, actor=admin_user)
    assert list(events.order_by("pk").values_list("from_state", "to_state")) == [
        ("UP", "MAINTENANCE"),
        ("MAINTENANCE", "DISCONNECTED"),
    ]


def test_illegal_maintenance_transition_is_409(admin_api, host):
    response = admin_api.post(f"{HOSTS}{host.uuid}/maintenance-off/")
    assert response.status_code == 409
    assert response.data["code"] == "conflict"
    assert "UP" in response.data["detail"]

    admin_api.post(f"{HOSTS}{host.uuid}/maintenance/")
    response = admin_api.post(f"{HOSTS}{host.uuid}/maintenance/")
    assert response.status_code == 409
    assert "MAINTENANCE" in response.data["detail"]


def test_unknown_host_is_404(admin_api):
    url = f"{HOSTS}00000000-0000-0000-0000-000000000000/maintenance/"
    assert admin_api.post(url).status_code == 404


def test_hosts_list_query_count_is_constant(admin_api, zone, django_assert_max_num_queries):
    first = make_host(zone, "kvm-0")
    make_pool(zone, name="pool-0", hosts=[first])
    with django_assert_max_num_queries(3):
        assert len(admin_api.get(HOSTS).data["results"]) == 1
    for n in range(1, 10):
        make_pool(zone, name=f"pool-{n}", hosts=[first, make_host(zone, f"kvm-{n}")])
    with django_assert_max_num_queries(3):
        assert len(admin_api.get(HOSTS).data["results"]) == 10


# Primary pools -----------------------------------------------------------------------------


def test_staff_creates_and_updates_a_pool(admin_api, api, zone, host):
    response = admin_api.post(POOLS, pools_payload(zone, hosts=[str(host.uuid)]), format="json")
    assert response.status_code == 201, response.data
    created = response.json()
    assert (created["zone"], created["pool_type"], created["hosts"]) == (
        str(zone.uuid),
        "dir",
        [str(host.uuid)],
    )
    assert created["cache_threshold_percent"] == 80
    assert created["used_bytes"] == 0

    other = make_host(zone, "kvm-2")
    url = f"{POOLS}{created['id']}/"
    changed = {"hosts": [str(host.uuid), str(other.uuid)], "cache_threshold_percent": 90}
    response = admin_api.patch(url, changed, format="json")
    assert response.status_code == 200, response.data
    assert sorted(response.json()["hosts"]) == sorted(changed["hosts"])
    assert admin_api.get(url).data["cache_threshold_percent"] == 90
    assert api.get(url).status_code == 403


def test_pools_are_staff_only(api, zone, pool):
    assert api.get(POOLS).status_code == 403, "paths and hosts are infrastructure"
    assert api.post(POOLS, pools_payload(zone), format="json").status_code == 403
    assert api.patch(f"{POOLS}{pool.uuid}/", {"path": "/x"}, format="json").status_code == 403


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cache_threshold_percent", 0),
        ("cache_threshold_percent", 101),
        ("pool_type", "nfs"),
        ("zone", "00000000-0000-0000-0000-000000000000"),
        ("zone", "not-a-uuid"),
        ("hosts", ["00000000-0000-0000-0000-000000000000"]),
        ("name", ""),
        ("path", ""),
    ],
)
def test_bad_pool_input_names_the_field(admin_api, zone, field, value):
    response = admin_api.post(POOLS, {**pools_payload(zone), field: value}, format="json")
    assert response.status_code == 400
    assert field in response.data
    assert not PrimaryPool.objects.exists()


def test_pool_hosts_must_be_in_its_zone(admin_api, zone):
    stranger = make_host(ZoneFactory(name="zone-b"), "kvm-b")
    response = admin_api.post(POOLS, pools_payload(zone, hosts=[str(stranger.uuid)]), format="json")
    assert response.status_code == 400
    assert "kvm-b" in str(response.data["hosts"])


def test_a_pool_cannot_move_to_another_zone(admin_api, pool):
    elsewhere = ZoneFactory(name="zone-b")
    url = f"{POOLS}{pool.uuid}/"
    response = admin_api.patch(url, {"zone": str(elsewhere.uuid)}, format="json")
    assert response.status_code == 400
    assert "zone" in response.data


def test_pools_are_not_deleted_through_the_api(admin_api, pool):
    assert admin_api.delete(f"{POOLS}{pool.uuid}/").status_code == 405


def test_pools_list_query_count_is_constant(admin_api, zone, django_assert_max_num_queries):
    first = make_host(zone, "kvm-0")
    make_pool(zone, name="pool-0", hosts=[first])
    with django_assert_max_num_queries(3):
        assert len(admin_api.get(POOLS).data["results"]) == 1
    for n in range(1, 10):
        make_pool(zone, name=f"pool-{n}", hosts=[make_host(zone, f"kvm-{n}"), first])
    with django_assert_max_num_queries(3):
        assert len(admin_api.get(POOLS).data["results"]) == 10


# Pool copies: listing and tenancy ----------------------------------------------------------


def test_pool_copy_shape_and_filters(admin_api, register, pool, user):
    template = register()
    other = register(name="alpine")
    pool_copy_set_pinned(template_id=template.pk, pool_id=pool.pk, pinned=True, actor=user)
    TemplatePoolRef.objects.create(template=other, pool=pool)  # a cached copy made by a deploy

    rows = admin_api.get(COPIES, {"template": str(template.uuid)}).data["results"]
    assert rows == [
        {
            "id": TemplatePoolRef.objects.get(template=template).pk,
            "template": str(template.uuid),
            "template_name": "debian-12",
            "pool": str(pool.uuid),
            "pool_name": "pool-1",
            "zone": str(pool.zone.uuid),
            "state": "NOT_DOWNLOADED",
            "pinned": True,
            "download_percent": 0,
            "size": None,
            "physical_size": None,
            "install_path": "",
            "error_text": "",
            "attempts": 0,
            "last_used_at": None,
            "created_at": rows[0]["created_at"],
            "updated_at": rows[0]["updated_at"],
        }
    ]

    def names(**query):
        return [r["template_name"] for r in admin_api.get(COPIES, query).data["results"]]

    assert names(pinned="false") == ["alpine"]
    assert names(pinned="true") == ["debian-12"]
    assert sorted(names(pool=str(pool.uuid))) == ["alpine", "debian-12"]
    assert names(state="DOWNLOADED") == []
    assert names(pool="00000000-0000-0000-0000-000000000000") == []


def test_pool_copies_are_staff_only(
    api, other_api, admin_api, register, pool, other_account, other_user
):
    mine = register()
    secret = register(name="secret", account=other_account, actor=other_user)
    for template in (mine, secret):
        TemplatePoolRef.objects.create(template=template, pool=pool)

    assert api.get(COPIES).status_code == 403
    assert other_api.get(COPIES).status_code == 403
    names = sorted(r["template_name"] for r in admin_api.get(COPIES).data["results"])
    assert names == ["debian-12", "secret"]


def test_pool_copies_list_query_count_is_constant(
    admin_api, register, pool, django_assert_max_num_queries
):
    TemplatePoolRef.objects.create(template=register(name="t-0"), pool=pool)
    with django_assert_max_num_queries(2):
        assert len(admin_api.get(COPIES).data["results"]) == 1
    for n in range(1, 10):
        TemplatePoolRef.objects.create(template=register(name=f"t-{n}"), pool=pool)
    with django_assert_max_num_queries(2):
        assert len(admin_api.get(COPIES).data["results"]) == 10


# Pool copies: prepare and unpin ------------------------------------------------------------


def test_prepare_pins_on_chosen_pools_and_queues_one_copy_per_pool(
    admin_api, register, zone, host, pool, queued, django_capture_on_commit_callbacks
):
    template = register()
    second = make_pool(zone, name="pool-2", hosts=[host])
    make_pool(zone, name="pool-3", hosts=[host])  # not chosen
    body = {"template": str(template.uuid), "pools": [str(pool.uuid), str(second.uuid)]}

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.post(f"{COPIES}prepare/", body, format="json")

    assert response.status_code == 202, response.data
    assert [(r["pool_name"], r["pinned"]) for r in response.data] == [
        ("pool-1", True),
        ("pool-2", True),
    ]
    assert set(
        TemplatePoolRef.objects.filter(pinned=True).values_list("pool__name", flat=True)
    ) == {
        "pool-1",
        "pool-2",
    }
    assert sorted((c["queue"], c["kwargs"]["pool_id"]) for c in queued) == [
        ("host.kvm-1", pool.pk),
        ("host.kvm-1", second.pk),
    ]
    assert {c["kwargs"]["template_id"] for c in queued} == {template.pk}


def test_prepare_by_zone_pins_every_pool_of_the_zone(
    admin_api, register, zone, host, pool, queued, django_capture_on_commit_callbacks
):
    template = register()
    make_pool(zone, name="pool-2", hosts=[host])
    make_pool(ZoneFactory(name="zone-b"), name="pool-b", hosts=[make_host(zone, "kvm-b")])
    body = {"template": str(template.uuid), "zone": str(zone.uuid)}

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.post(f"{COPIES}prepare/", body, format="json")

    assert response.status_code == 202, response.data
    assert sorted(r["pool_name"] for r in response.data) == ["pool-1", "pool-2"]
    assert len(queued) == 2


def test_a_prepared_template_survives_the_sweep_until_unpinned(
    admin_api, register, pool, user, queued
):
    template = register()
    admin_api.post(
        f"{COPIES}prepare/",
        {"template": str(template.uuid), "pools": [str(pool.uuid)]},
        format="json",
    )
    assert TemplatePoolRef.objects.get(template=template, pool=pool).pinned is True

    services.template_deactivate(template_id=template.pk, actor=user)
    services.gc_sweep()
    assert Template.objects.get(pk=template.pk).state == "INACTIVE"
    references = admin_api.get(f"/api/v1/templates/{template.uuid}/references/").data
    assert [(r["kind"], r["name"]) for r in references["references"]] == [
        ("pinned_pool_copy", "pool-1")
    ]

    response = admin_api.post(
        f"{COPIES}unpin/", {"template": str(template.uuid), "pool": str(pool.uuid)}, format="json"
    )
    assert (response.status_code, response.data["pinned"]) == (200, False)
    services.gc_sweep()
    assert Template.objects.get(pk=template.pk).state == "REMOVED"


def test_prepare_and_unpin_are_staff_only(api, register, pool):
    template = register()
    body = {"template": str(template.uuid), "pools": [str(pool.uuid)]}
    assert api.post(f"{COPIES}prepare/", body, format="json").status_code == 403
    body = {"template": str(template.uuid), "pool": str(pool.uuid)}
    assert api.post(f"{COPIES}unpin/", body, format="json").status_code == 403
    assert not TemplatePoolRef.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "template"),
        ({"template": "00000000-0000-0000-0000-000000000000", "pools": ["POOL"]}, "template"),
        ({"template": "TEMPLATE"}, "pools"),
        ({"template": "TEMPLATE", "pools": []}, "pools"),
        ({"template": "TEMPLATE", "pools": ["00000000-0000-0000-0000-000000000000"]}, "pools"),
        ({"template": "TEMPLATE", "pools": ["POOL"], "zone": "ZONE"}, "pools"),
        ({"template": "TEMPLATE", "zone": "00000000-0000-0000-0000-000000000000"}, "zone"),
        ({"template": "TEMPLATE", "zone": "EMPTY_ZONE"}, "zone"),
    ],
)
def test_bad_prepare_input_names_the_field(admin_api, register, zone, pool, queued, body, field):
    template = register()
    ids = {
        "TEMPLATE": str(template.uuid),
        "POOL": str(pool.uuid),
        "ZONE": str(zone.uuid),
        "EMPTY_ZONE": str(ZoneFactory(name="empty").uuid),
    }

    def fill(value):
        return [fill(v) for v in value] if isinstance(value, list) else ids.get(value, value)

    response = admin_api.post(
        f"{COPIES}prepare/", {k: fill(v) for k, v in body.items()}, format="json"
    )
    assert response.status_code == 400
    assert field in response.data
    assert not TemplatePoolRef.objects.exists()


def test_prepare_without_an_up_host_is_409_and_pins_nothing(
    admin_api, register, pool, host, queued, django_capture_on_commit_callbacks
):
    template = register()
    admin_api.post(f"{HOSTS}{host.uuid}/maintenance/")
    body = {"template": str(template.uuid), "pools": [str(pool.uuid)]}

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.post(f"{COPIES}prepare/", body, format="json")

    assert response.status_code == 409
    assert response.data["code"] == "pool_copy_failed"
    assert "pool-1" in response.data["detail"]
    assert not TemplatePoolRef.objects.exists()
    assert queued == []


def test_prepare_of_an_inactive_template_is_409(admin_api, register, pool, user, queued):
    template = register()
    services.template_deactivate(template_id=template.pk, actor=user)
    body = {"template": str(template.uuid), "pools": [str(pool.uuid)]}
    response = admin_api.post(f"{COPIES}prepare/", body, format="json")
    assert response.status_code == 409
    assert "INACTIVE" in response.data["detail"]
    assert not TemplatePoolRef.objects.filter(pinned=True).exists()


def test_unpin_without_a_copy_is_400_and_creates_nothing(admin_api, register, pool):
    template = register()
    body = {"template": str(template.uuid), "pool": str(pool.uuid)}
    response = admin_api.post(f"{COPIES}unpin/", body, format="json")
    assert response.status_code == 400
    assert "pool" in response.data
    assert not TemplatePoolRef.objects.exists()


# VMs by host and pool ----------------------------------------------------------------------


def test_vms_filter_by_host_and_pool(api, register, zone, account, user, host, pool):
    template = register()
    deployed = vm_services.vm_deploy(
        name="web-1", template_id=template.pk, zone=zone, account=account, actor=user
    )
    vm_services.vm_create(
        name="record", template_id=template.pk, zone=zone, account=account, actor=user
    )

    def names(**query):
        return [vm["name"] for vm in api.get("/api/v1/vms/", query).data["results"]]

    assert names(host=str(host.uuid)) == ["web-1"]
    assert names(pool=str(pool.uuid)) == ["web-1"]
    assert names(host="00000000-0000-0000-0000-000000000000") == []
    assert sorted(names()) == ["record", "web-1"]
    assert deployed.host == host
