"""Store-to-store copies: copying a template to another zone, and a new image store receiving
the catalogue. Real stores in temp directories, a real HTTP server for the one download, real
qcow2 images; the new-store path with a real storage worker process."""

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from templates_app import services
from templates_app.copies import store_copy_download
from templates_app.models import ImageStore, TemplateStoreRef
from templates_app.store_fill import image_store_fill, templates_wanted_by
from tests.templates_app import test_celery_worker

from .factories import ImageStoreFactory, ZoneFactory

worker = test_celery_worker.worker  # the real worker fixture


@pytest.fixture
def storage_queue_is_private(monkeypatch, private_celery_queue):
    """Tasks the worker itself sends (the fill queues downloads) go to the queue it consumes:
    request this before `worker`, which starts with this process's environment."""
    monkeypatch.setenv("STENCIL_STORAGE_QUEUE", private_celery_queue)


@pytest.fixture
def image(httpserver, settings, tmp_path):
    """A real qcow2 with a pattern, served over HTTP; (url, checksum, bytes)."""
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    path = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "16M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(path)],
        check=True,
        capture_output=True,
    )
    data = path.read_bytes()
    httpserver.expect_request("/img.qcow2").respond_with_data(data)
    return httpserver.url_for("/img.qcow2"), "{SHA-256}" + hashlib.sha256(data).hexdigest(), data


def new_store(tmp_path, zone, name: str) -> ImageStore:
    path = tmp_path / name
    path.mkdir()
    return ImageStoreFactory(zone=zone, name=name, path=str(path))


def bytes_of(ref: TemplateStoreRef) -> bytes:
    ref.refresh_from_db()
    return (Path(ref.store.path) / ref.install_path).read_bytes()


def downloads(httpserver) -> int:
    return sum(1 for request, _ in httpserver.log if request.path == "/img.qcow2")


@pytest.mark.django_db
def test_copy_to_another_zone_copies_store_to_store_without_a_download(
    api, register, image, httpserver, tmp_path
):
    url, checksum, data = image
    template = register(url=url, checksum=checksum)
    first = TemplateStoreRef.objects.get(template=template)
    first = store_copy_download(ref_id=first.pk)
    assert first.state == "READY"
    zone_b = ZoneFactory(name="zone-b")
    new_store(tmp_path, zone_b, "store-b")

    response = api.post(
        f"/api/v1/templates/{template.uuid}/copy/", {"zones": [str(zone_b.uuid)]}, format="json"
    )
    copy = TemplateStoreRef.objects.get(template=template, store__zone=zone_b)
    done = store_copy_download(ref_id=copy.pk)

    assert response.status_code == 202, response.data
    assert (done.download_state, done.state) == ("DOWNLOADED", "READY"), done.error_text
    assert bytes_of(done) == data and done.sha256 == first.sha256
    assert downloads(httpserver) == 1, "the second zone's copy came from the first store"
    assert done.download_percent == 100 and done.charged_bytes == len(data)


@pytest.mark.django_db
def test_a_rotten_source_copy_is_skipped_for_the_url(register, image, httpserver, tmp_path):
    url, checksum, data = image
    template = register(url=url, checksum=checksum)
    first = store_copy_download(ref_id=TemplateStoreRef.objects.get(template=template).pk)
    (Path(first.store.path) / first.install_path).write_bytes(b"rot" + data[3:])
    zone_b = ZoneFactory(name="zone-b")
    new_store(tmp_path, zone_b, "store-b")
    services.template_zones_add(template_id=template.pk, zones=[zone_b], actor=None)

    done = store_copy_download(ref_id=TemplateStoreRef.objects.get(store__zone=zone_b).pk)

    assert done.state == "READY", done.error_text
    assert bytes_of(done) == data
    assert downloads(httpserver) == 2, "the bad source was refused and the URL used instead"


@pytest.mark.django_db
def test_copy_of_an_uploaded_template_needs_a_ready_copy(api, register, zone):
    template = register()
    services.Template.objects.filter(pk=template.pk).update(url="")
    zone_b = ZoneFactory(name="zone-b")

    response = api.post(
        f"/api/v1/templates/{template.uuid}/copy/", {"zones": [str(zone_b.uuid)]}, format="json"
    )

    assert response.status_code == 400
    assert "no READY copy" in str(response.data["zones"])
    assert not template.zones.filter(pk=zone_b.pk).exists(), "nothing half-written"


@pytest.mark.django_db
def test_which_templates_a_new_store_gets(register, store, zone, tmp_path, user, settings):
    public = register(name="public", is_public=True)
    private = register(name="private")
    gone = register(name="deleted", is_public=True)
    services.template_deactivate(template_id=gone.pk, actor=user)
    direct = register(name="direct", direct_download=True, checksum="{MD5}" + "0" * 32)
    zone_z = ZoneFactory(name="zone-z")
    new_store(tmp_path, zone_z, "store-z")
    elsewhere = register(name="other-zone", zones=[zone_z], is_public=True)

    second = new_store(tmp_path, zone, "store-2")
    wanted = set(templates_wanted_by(second).values_list("name", flat=True))
    assert wanted == {"public"}, "the private one's copy on store-a is on its way"

    ImageStore.objects.filter(pk=store.pk).update(state="DISABLED")  # the zone lost store-a
    third = new_store(tmp_path, zone, "store-3")
    assert set(templates_wanted_by(third).values_list("name", flat=True)) == {"public", "private"}
    assert {direct.pk, elsewhere.pk, gone.pk}.isdisjoint(
        templates_wanted_by(third).values_list("pk", flat=True)
    )
    assert public and private


@pytest.mark.django_db
def test_filling_twice_queues_each_copy_once(
    register, zone, tmp_path, django_capture_on_commit_callbacks
):
    register(name="public", is_public=True)
    second = new_store(tmp_path, zone, "store-2")

    with django_capture_on_commit_callbacks() as callbacks:
        first = image_store_fill(store_id=second.pk)
        again = image_store_fill(store_id=second.pk)

    assert len(first) == 1 and again == []
    assert len(callbacks) == 1, "one download task sent, after the commit"
    assert TemplateStoreRef.objects.get(pk=first[0]).download_state == "NOT_DOWNLOADED"


@pytest.mark.django_db(transaction=True)
def test_a_store_added_through_the_api_gets_the_catalogue_from_the_worker(
    storage_queue_is_private, worker, register, image, httpserver, admin_api, zone, tmp_path, store
):
    url, checksum, data = image
    public = register(name="public", url=url, checksum=checksum, is_public=True)
    everywhere = register(
        name="everywhere", url=url, checksum=checksum, is_public=True, zones=None, cross_zones=True
    )
    wait_ready(TemplateStoreRef.objects.filter(store=store))
    zone_c = ZoneFactory(name="zone-c")
    (tmp_path / "store-2").mkdir()
    (tmp_path / "store-c").mkdir()

    same_zone = admin_api.post(
        "/api/v1/image-stores/",
        {"name": "store-2", "zone": str(zone.uuid), "path": str(tmp_path / "store-2")},
        format="json",
    )
    other_zone = admin_api.post(
        "/api/v1/image-stores/",
        {"name": "store-c", "zone": str(zone_c.uuid), "path": str(tmp_path / "store-c")},
        format="json",
    )
    assert same_zone.status_code == other_zone.status_code == 201
    new = wait_ready(
        TemplateStoreRef.objects.filter(store__name__in=["store-2", "store-c"]), count=3
    )

    assert sorted((ref.template.name, ref.store.name) for ref in new) == [
        ("everywhere", "store-2"),
        ("everywhere", "store-c"),
        ("public", "store-2"),
    ]
    assert all(bytes_of(ref) == data for ref in new)
    assert downloads(httpserver) == 2, "only the two registrations downloaded; stores copied"
    assert public and everywhere


def wait_ready(queryset, *, count: int | None = None, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        refs = list(queryset.select_related("template", "store"))
        complete = refs and (count is None or len(refs) == count)
        if complete and all(r.state == "READY" for r in refs):
            return refs
        time.sleep(0.2)
    raise AssertionError(
        [(r.template.name, r.store.name, r.download_state, r.error_text) for r in refs]
    )
