"""Images that cannot blow up storage. Each attack image (tests/image_bombs.py: real qemu-img
and qemu-io, metadata edited with struct) is served by a real HTTP server or uploaded through
the API, and must end in an error naming the rule before anything is converted or copied in
full: nothing charged, no temporary file left, no `qemu-img convert` run.

The rules (templates_app/images/inspection.py): our own L1 check (no shared or out-of-file L2
tables), `qemu-img check` (no corruption, leak or check error), `qemu-img measure` within the
room the bytes go to (the account's max_secondary_bytes, a pool's free space), and
STENCIL_MAX_VIRTUAL_SIZE.
"""

import hashlib
from pathlib import Path

import pytest

from agents_app import services as vm_services
from agents_app.agent import heartbeat, virt
from agents_app.agent.vms import vm_deploy_on_host
from agents_app.models import PrimaryPool, TemplatePoolRef
from templates_app import storepaths
from templates_app.copies import store_copy_download
from templates_app.images import qemu
from templates_app.models import Account, Template, TemplateStoreRef
from tests import image_bombs

pytestmark = pytest.mark.django_db

MiB = 1 << 20

# (maker, settings, words the error must contain)
ATTACKS = {
    "shared-cluster": (image_bombs.shared_cluster, {}, "qemu-img check found 1 corruption"),
    "claims-past-end": (image_bombs.claims_past_end, {}, "references past the end of the file"),
    "claims-64-tib": (
        image_bombs.claims_64_tib,
        {"STENCIL_MAX_VIRTUAL_SIZE": 128 << 40},
        "qcow2 clusters are shared: 128 L1 entries",
    ),
    "4-tib-over-the-limit": (
        image_bombs.huge,
        {},
        "exceeds the limit of 2 TiB (STENCIL_MAX_VIRTUAL_SIZE)",
    ),
}


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_DOWNLOAD_BACKOFF_BASE = 0.01


@pytest.fixture
def qemu_runs(monkeypatch) -> list[str]:
    """The qemu-img subcommands run (the real ones: this only records them)."""
    runs: list[str] = []
    real = qemu.run_qemu_img

    def recording(args, **kwargs):
        runs.append(str(args[0]))
        return real(args, **kwargs)

    monkeypatch.setattr(qemu, "run_qemu_img", recording)
    return runs


@pytest.fixture(params=list(ATTACKS), ids=list(ATTACKS))
def attack(request, tmp_path, settings):
    maker, overrides, words = ATTACKS[request.param]
    for name, value in overrides.items():
        setattr(settings, name, value)
    data = maker(tmp_path / f"{request.param}.qcow2").read_bytes()
    return data, words


def sha256(data: bytes) -> str:
    return "{SHA-256}" + hashlib.sha256(data).hexdigest()


def files_under(folder) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def register_by_api(api, zone, url: str, checksum: str, **overrides):
    body = {"name": "bomb", "format": "QCOW2", "url": url, "checksum": checksum}
    response = api.post("/api/v1/templates/", {**body, "zones": [str(zone.uuid)], **overrides})
    assert response.status_code == 201, response.data
    return response.data


def assert_nothing_charged(account) -> None:
    account.refresh_from_db()
    assert account.used_secondary_bytes == 0
    assert not TemplateStoreRef.objects.filter(charged_bytes__gt=0).exists()


# --- store downloads ---------------------------------------------------------------------------


def test_a_store_download_of_an_attack_image_ends_in_error_naming_the_rule(
    api, zone, store, account, httpserver, attack, qemu_runs
):
    data, words = attack
    httpserver.expect_request("/bomb.qcow2").respond_with_data(data)
    body = register_by_api(api, zone, httpserver.url_for("/bomb.qcow2"), sha256(data))
    copy = TemplateStoreRef.objects.get(template__uuid=body["id"])

    ref = store_copy_download(ref_id=copy.pk)

    assert (ref.download_state, ref.state) == ("DOWNLOAD_ERROR", "ALLOCATED")
    assert ref.error_text.startswith("image rejected: ")
    assert words in ref.error_text
    assert files_under(store.path) == [], "the temporary file is gone"
    assert_nothing_charged(account)
    assert "convert" not in qemu_runs


def test_a_compressed_image_larger_than_the_quota_once_written_is_refused(
    api, zone, store, account, httpserver, tmp_path, qemu_runs
):
    """A consistent image (qemu-img check is clean) of 64 MiB in 400 KiB of compressed
    clusters: within the account's 32 MiB as a file, not once written out."""
    data = image_bombs.compressed(tmp_path / "c.qcow2").read_bytes()
    Account.objects.filter(pk=account.pk).update(max_secondary_bytes=32 * MiB)
    httpserver.expect_request("/c.qcow2").respond_with_data(data)
    body = register_by_api(api, zone, httpserver.url_for("/c.qcow2"), sha256(data))

    ref = store_copy_download(ref_id=TemplateStoreRef.objects.get(template__uuid=body["id"]).pk)

    assert ref.download_state == "DOWNLOAD_ERROR"
    assert "qemu-img measure" in ref.error_text
    assert f"more than the {32 * MiB} bytes the account's max_secondary_bytes leaves" in (
        ref.error_text
    )
    assert files_under(store.path) == []
    assert_nothing_charged(account)
    assert "check" in qemu_runs and "convert" not in qemu_runs


# --- uploads -----------------------------------------------------------------------------------


def post_upload(client, params, data: bytes):
    path = params["post_url"].split("://", 1)[1].split("/", 1)[1]
    return client.generic(
        "POST",
        "/" + path,
        data=data,
        content_type="application/octet-stream",
        headers={
            "X-Metadata": params["metadata"],
            "X-Expires": params["expires"],
            "X-Signature": params["signature"],
        },
    )


def test_an_uploaded_attack_image_is_a_400_naming_the_rule(
    api, client, zone, store, account, attack, qemu_runs
):
    data, words = attack
    params = api.post(
        "/api/v1/templates/upload-params/",
        {"name": "up-bomb", "format": "QCOW2", "zone": str(zone.uuid)},
        format="json",
    ).data

    response = post_upload(client, params, data)

    assert response.status_code == 400
    assert words in response.json()["file"][0]
    assert TemplateStoreRef.objects.get(template__uuid=params["id"]).download_state == (
        "UPLOAD_ERROR"
    )
    assert files_under(store.path) == []
    assert_nothing_charged(account)
    assert "convert" not in qemu_runs


# --- the agent: direct download and the copy onto a pool ----------------------------------------


def node_with_pool(tmp_path: Path, *, available: int | None = None) -> tuple[str, Path]:
    """A libvirt test-driver node with one dir pool. With `available`, a filler volume takes
    the rest of its space (the test driver counts volume allocations, and writes no file)."""
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "node.xml", pools={"primary": pool_dir})
    if available is not None:
        conn = virt.connection(uri)
        filler = virt.pool_info(conn, "primary").available - available
        conn.storagePoolLookupByName("primary").createXML(
            f"<volume><name>filler</name><capacity unit='bytes'>{filler}</capacity>"
            f"<allocation unit='bytes'>{filler}</allocation></volume>",
            0,
        )
        assert virt.pool_info(conn, "primary").available == available
    return uri, pool_dir


@pytest.fixture
def make_pool(zone, tmp_path):
    uris = []

    def make(available: int | None = None) -> PrimaryPool:
        uri, pool_dir = node_with_pool(tmp_path, available=available)
        uris.append(uri)
        host = heartbeat.host_register(name="kvm-bomb", zone=zone, libvirt_uri=uri)
        pool = PrimaryPool.objects.create(
            zone=zone, name="pool-bomb", libvirt_pool_name="primary", path=str(pool_dir)
        )
        pool.hosts.add(host)
        return pool

    yield make
    for uri in uris:
        virt.close_connections(uri)


def deploy(template_uuid, zone, account, user):
    template_id = Template.objects.get(uuid=template_uuid).pk
    vm = vm_services.vm_deploy(
        name="bomb", template_id=template_id, zone=zone, account=account, actor=user
    )
    return vm_deploy_on_host(vm_id=vm.pk)


def test_a_direct_download_of_an_attack_image_never_reaches_the_pool(
    api, zone, account, user, httpserver, attack, qemu_runs, make_pool
):
    data, words = attack
    pool = make_pool()
    httpserver.expect_request("/dd-bomb.qcow2").respond_with_data(data)
    body = register_by_api(
        api, zone, httpserver.url_for("/dd-bomb.qcow2"), sha256(data), direct_download=True
    )

    vm = deploy(body["id"], zone, account, user)

    assert vm.state == "ERROR"
    assert words in vm.error_text
    copy = TemplatePoolRef.objects.get(template__uuid=body["id"])
    assert copy.state == "DOWNLOAD_ERROR"
    assert words in copy.error_text
    assert files_under(pool.path) == []
    assert "convert" not in qemu_runs


def test_a_direct_download_stops_at_the_pools_free_space(
    api, zone, account, user, httpserver, tmp_path, qemu_runs, make_pool
):
    data = image_bombs.compressed(tmp_path / "c.qcow2").read_bytes()
    pool = make_pool(available=8 * MiB)
    httpserver.expect_request("/c.qcow2").respond_with_data(data)
    body = register_by_api(
        api, zone, httpserver.url_for("/c.qcow2"), sha256(data), direct_download=True
    )

    vm = deploy(body["id"], zone, account, user)

    assert vm.state == "ERROR"
    assert "more than the 8388608 bytes the free space of pool 'pool-bomb' leaves" in (
        vm.error_text
    )
    assert files_under(pool.path) == []


def stored_then_replaced(api, zone, store, httpserver, tmp_path, data: bytes, **overrides):
    """A template whose store copy a good image made READY, its file then replaced by data:
    what an image accepted by an older inspector looks like on the store."""
    good = image_bombs.good(tmp_path / "good.qcow2").read_bytes()
    httpserver.expect_request("/good.qcow2").respond_with_data(good)
    body = register_by_api(api, zone, httpserver.url_for("/good.qcow2"), sha256(good), **overrides)
    ref = store_copy_download(ref_id=TemplateStoreRef.objects.get(template__uuid=body["id"]).pk)
    assert ref.state == "READY", ref.error_text
    storepaths.absolute(ref.store, ref.install_path).write_bytes(data)
    return body["id"]


@pytest.mark.parametrize("policy", ["CACHE", "DIRECT"])
def test_a_stored_attack_image_is_never_copied_onto_a_pool(
    api, zone, store, account, user, httpserver, tmp_path, attack, qemu_runs, make_pool, policy
):
    data, words = attack
    pool = make_pool()
    template_id = stored_then_replaced(
        api, zone, store, httpserver, tmp_path, data, primary_policy=policy
    )

    vm = deploy(template_id, zone, account, user)

    assert vm.state == "ERROR"
    assert words in vm.error_text
    assert files_under(pool.path) == []
    assert "convert" not in qemu_runs


def test_a_stored_image_that_expands_past_the_pools_free_space_is_not_copied(
    api, zone, store, account, user, httpserver, tmp_path, qemu_runs, make_pool
):
    pool = make_pool(available=8 * MiB)
    compressed = image_bombs.compressed(tmp_path / "c.qcow2")
    template_id = stored_then_replaced(
        api, zone, store, httpserver, tmp_path, compressed.read_bytes()
    )

    vm = deploy(template_id, zone, account, user)

    assert vm.state == "ERROR"
    assert "more than the 8388608 bytes the free space of pool 'primary' leaves" in vm.error_text
    assert files_under(pool.path) == []
    assert "convert" not in qemu_runs
