"""agents_app.virt on both libvirt backends: the test driver and a real libvirtd (qemu:///system).

Each test runs once per backend (ids test-driver and libvirtd). Where the backends differ, the
test branches on the backend and asserts what that backend does: nothing is skipped.
"""

from __future__ import annotations

import gc
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from agents_app.agent import virt
from templates_app.images.inspection import ImageRejected
from templates_app.images.qemu import QemuImgError, qemu_img_info, run_qemu_img
from tests import libvirt_backends
from tests.libvirt_backends import LibvirtBackend

libvirt_backend = libvirt_backends.libvirt_backend

MIB = 1 << 20
BASE_SIZE = 16 * MIB
# Where libvirtd (Debian's build) keeps managed save images.
MANAGED_SAVE_DIR = Path("/var/lib/libvirt/qemu/save")


def qemu_io(image: Path, image_format: str, command: str) -> subprocess.CompletedProcess[str]:
    """Run one qemu-io command on image (no shell); the caller checks the exit and the output."""
    return subprocess.run(
        ["qemu-io", "-f", image_format, "-c", command, str(image)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_pattern(image: Path, image_format: str, pattern: str, *, matches: bool = True) -> None:
    """Assert that 64 KiB at 1 MiB in image hold the byte pattern (or, with matches=False, not)."""
    result = qemu_io(image, image_format, f"read -P {pattern} 1M 64k")
    output = result.stdout + result.stderr
    if matches:
        assert result.returncode == 0, output
        assert "read 65536/65536 bytes at offset 1048576" in output
        assert "Pattern verification failed" not in output
    else:
        assert "Pattern verification failed" in output, output


def write_pattern(image: Path, image_format: str, pattern: str) -> None:
    result = qemu_io(image, image_format, f"write -P {pattern} 1M 64k")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote 65536/65536 bytes at offset 1048576" in result.stdout


def make_qcow2(path: Path, size: int = BASE_SIZE) -> Path:
    run_qemu_img(["create", "-q", "-f", "qcow2", path.absolute(), str(size)])
    return path


def listed_volumes(backend: LibvirtBackend) -> list[str]:
    pool = backend.connection().storagePoolLookupByName(backend.pool_name)
    return pool.listVolumes()


def new_domain(backend: LibvirtBackend, name: str, *, start: bool = False) -> tuple[str, str]:
    """Define a domain on a fresh qcow2 overlay of a fresh base in the pool; return (name, disk)."""
    conn = backend.connection()
    base = make_qcow2(backend.pool_dir / f"{name}-base.qcow2")
    disk = virt.write_overlay(
        conn,
        backend.pool_name,
        f"{name}-root.qcow2",
        backing_path=str(base),
        backing_format="qcow2",
        capacity=BASE_SIZE,
    )
    dom_name = backend.unique(name)
    xml = virt.domain_xml(
        name=dom_name,
        uuid=str(uuid.uuid4()),
        memory_mib=64,
        vcpus=1,
        disk_path=disk,
        disk_format="qcow2",
        domain_type=backend.domain_type,
    )
    assert virt.define_domain(conn, xml) == dom_name
    if start:
        virt.start_domain(conn, dom_name)
    return dom_name, disk


def disk_snapshot_names(disk: str) -> list[str]:
    """Names of the internal snapshots stored in a qcow2 file."""
    return [snap["name"] for snap in qemu_img_info(Path(disk), "qcow2").get("snapshots", [])]


# --- volumes --------------------------------------------------------------------------------


def test_pool_info(libvirt_backend):
    info = virt.pool_info(libvirt_backend.connection(), libvirt_backend.pool_name)
    assert info.name == libvirt_backend.pool_name
    assert Path(info.path) == libvirt_backend.pool_dir
    # The test driver reports fixed sizes of its own (100 GiB, nothing allocated), whatever the
    # node XML says; libvirtd reports the file system's.
    assert info.capacity > 0
    assert info.available > 0
    assert info.allocation >= 0


def test_write_overlay(libvirt_backend):
    conn = libvirt_backend.connection()
    pool_name, pool_dir = libvirt_backend.pool_name, libvirt_backend.pool_dir
    base = make_qcow2(pool_dir / "base.qcow2")

    path = virt.write_overlay(
        conn,
        pool_name,
        "vm-1-root.qcow2",
        backing_path=str(base),
        backing_format="QCOW2",
        capacity=2 * BASE_SIZE,
    )

    assert path == str(pool_dir / "vm-1-root.qcow2")
    assert Path(path).is_file()
    info = qemu_img_info(Path(path), "qcow2")
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 2 * BASE_SIZE
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"
    assert virt.volume_path(conn, pool_name, "vm-1-root.qcow2") == path
    volumes = listed_volumes(libvirt_backend)
    if libvirt_backend.kind == "qemu":
        # The refresh re-read the directory: libvirtd knows the base we wrote behind its back.
        assert sorted(volumes) == ["base.qcow2", "vm-1-root.qcow2"]
    else:
        # The test driver never reads the disk: it knows only the volume it created.
        assert volumes == ["vm-1-root.qcow2"]
    vol = conn.storagePoolLookupByName(pool_name).storageVolLookupByName("vm-1-root.qcow2")
    assert ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path") == str(base)


def test_write_overlay_capacity_defaults_to_backing_size(libvirt_backend):
    conn = libvirt_backend.connection()
    base = make_qcow2(libvirt_backend.pool_dir / "base.qcow2")

    path = virt.write_overlay(
        conn,
        libvirt_backend.pool_name,
        "root.qcow2",
        backing_path=str(base),
        backing_format="qcow2",
        capacity=0,
    )

    assert qemu_img_info(Path(path), "qcow2")["virtual-size"] == BASE_SIZE


def test_write_full_copy(libvirt_backend, tmp_path):
    conn = libvirt_backend.connection()
    pool_name, pool_dir = libvirt_backend.pool_name, libvirt_backend.pool_dir
    store = tmp_path / "store"
    store.mkdir()
    source = make_qcow2(store / "template.qcow2")
    write_pattern(source, "qcow2", "0x5a")

    path = virt.write_full_copy(
        conn,
        pool_name,
        "copy.qcow2",
        source_path=str(source),
        source_format="qcow2",
        fmt="qcow2",
        capacity=BASE_SIZE,
    )
    raw_path = virt.write_full_copy(
        conn,
        pool_name,
        "copy.raw",
        source_path=str(source),
        source_format="qcow2",
        fmt="RAW",
        capacity=0,
    )

    assert path == str(pool_dir / "copy.qcow2")
    info = qemu_img_info(Path(path), "qcow2")
    assert "backing-filename" not in info
    assert info["virtual-size"] == BASE_SIZE
    assert_pattern(Path(path), "qcow2", "0x5a")
    # qemu-io really verifies: another pattern does not match.
    assert_pattern(Path(path), "qcow2", "0x11", matches=False)
    assert qemu_img_info(Path(raw_path), "raw")["virtual-size"] == BASE_SIZE
    assert_pattern(Path(raw_path), "raw", "0x5a")
    assert virt.volume_path(conn, pool_name, "copy.raw") == raw_path
    assert {"copy.qcow2", "copy.raw"} <= set(listed_volumes(libvirt_backend))


def test_write_full_copy_failure_leaves_nothing(libvirt_backend, tmp_path):
    conn = libvirt_backend.connection()
    pool_name, pool_dir = libvirt_backend.pool_name, libvirt_backend.pool_dir
    missing = tmp_path / "no-such-template.qcow2"

    with pytest.raises(ImageRejected, match="cannot be read"):
        virt.write_full_copy(
            conn,
            pool_name,
            "copy.qcow2",
            source_path=str(missing),
            source_format="qcow2",
            fmt="qcow2",
            capacity=BASE_SIZE,
        )

    assert not (pool_dir / "copy.qcow2").exists()
    assert list(pool_dir.iterdir()) == []
    assert virt.volume_path(conn, pool_name, "copy.qcow2") is None
    assert "copy.qcow2" not in listed_volumes(libvirt_backend)


def test_write_overlay_failure_leaves_nothing(libvirt_backend, tmp_path):
    conn = libvirt_backend.connection()
    pool_name, pool_dir = libvirt_backend.pool_name, libvirt_backend.pool_dir
    not_qcow2 = tmp_path / "garbage.qcow2"
    not_qcow2.write_bytes(b"not an image" * 100)

    # libvirtd refuses the backing store itself (VirtError); on the test driver the record is
    # made and qemu-img fails (QemuImgError). Either way nothing remains.
    with pytest.raises((virt.VirtError, QemuImgError)):
        virt.write_overlay(
            conn,
            pool_name,
            "root.qcow2",
            backing_path=str(not_qcow2),
            backing_format="qcow2",
            capacity=BASE_SIZE,
        )

    assert list(pool_dir.iterdir()) == []
    assert virt.volume_path(conn, pool_name, "root.qcow2") is None


def test_existing_volume_name_is_refused_and_kept(libvirt_backend, tmp_path):
    conn = libvirt_backend.connection()
    pool_name = libvirt_backend.pool_name
    source = make_qcow2(tmp_path / "template.qcow2")
    write_pattern(source, "qcow2", "0x5a")
    path = virt.write_full_copy(
        conn,
        pool_name,
        "copy.qcow2",
        source_path=str(source),
        source_format="qcow2",
        fmt="qcow2",
        capacity=BASE_SIZE,
    )

    with pytest.raises(virt.VirtError) as caught:
        virt.write_full_copy(
            conn,
            pool_name,
            "copy.qcow2",
            source_path=str(source),
            source_format="qcow2",
            fmt="qcow2",
            capacity=BASE_SIZE,
        )

    assert "exist" in caught.value.message
    if libvirt_backend.kind == "qemu":
        assert caught.value.code == libvirt.VIR_ERR_STORAGE_VOL_EXIST
    else:
        # The test driver reports a duplicate name as a plain failed operation.
        assert caught.value.code == libvirt.VIR_ERR_OPERATION_FAILED
    # The failed second write must not clean up the first one's volume.
    assert virt.volume_path(conn, pool_name, "copy.qcow2") == path
    assert_pattern(Path(path), "qcow2", "0x5a")


def test_delete_volume_is_idempotent(libvirt_backend):
    conn = libvirt_backend.connection()
    pool_name, pool_dir = libvirt_backend.pool_name, libvirt_backend.pool_dir
    base = make_qcow2(pool_dir / "base.qcow2")
    path = virt.write_overlay(
        conn,
        pool_name,
        "root.qcow2",
        backing_path=str(base),
        backing_format="qcow2",
        capacity=BASE_SIZE,
    )

    virt.delete_volume(conn, pool_name, "root.qcow2")
    virt.delete_volume(conn, pool_name, "root.qcow2")

    assert not Path(path).exists()
    assert virt.volume_path(conn, pool_name, "root.qcow2") is None
    assert base.exists()
    # A file the pool does not know (a worker died before the refresh) goes too.
    stray = pool_dir / "stray.qcow2"
    stray.write_bytes(b"x")
    virt.delete_volume(conn, pool_name, "stray.qcow2")
    assert not stray.exists()


@pytest.mark.parametrize("name", ["", ".", "..", "../escape.qcow2", "a/b"])
def test_volume_names_stay_in_the_pool(libvirt_backend, name):
    conn = libvirt_backend.connection()
    with pytest.raises(virt.VirtError, match="invalid volume name"):
        virt.create_volume(conn, libvirt_backend.pool_name, name, capacity=MIB, fmt="raw")
    with pytest.raises(virt.VirtError, match="invalid volume name"):
        virt.delete_volume(conn, libvirt_backend.pool_name, name)


def test_missing_pool_is_a_virt_error(libvirt_backend):
    with pytest.raises(virt.VirtError) as caught:
        virt.pool_info(libvirt_backend.connection(), "no-such-pool-" + uuid.uuid4().hex[:8])
    assert caught.value.code == libvirt.VIR_ERR_NO_STORAGE_POOL
    assert "no-such-pool" in caught.value.message


# --- domains --------------------------------------------------------------------------------


def test_domain_xml():
    xml = virt.domain_xml(
        name="vm-1",
        uuid="11111111-2222-3333-4444-555555555555",
        memory_mib=512,
        vcpus=2,
        disk_path="/pool/vm-1-root.qcow2",
        disk_format="QCOW2",
        domain_type="qemu",
    )
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "vm-1"
    assert root.findtext("uuid") == "11111111-2222-3333-4444-555555555555"
    assert root.find("memory").get("unit") == "MiB"
    assert root.findtext("memory") == "512"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/type") == "hvm"
    assert root.findtext("on_crash") == "destroy"
    disk = root.find("devices/disk")
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("source").get("file") == "/pool/vm-1-root.qcow2"
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert root.find("devices/interface") is None


def test_domain_life_cycle(libvirt_backend):
    conn = libvirt_backend.connection()
    name, _disk = new_domain(libvirt_backend, "life")
    assert virt.domain_state(conn, name) == "shutoff"

    virt.start_domain(conn, name)
    virt.start_domain(conn, name)  # already running: fine
    assert virt.domain_state(conn, name) == "running"
    virt.reboot_domain(conn, name)
    assert virt.domain_state(conn, name) == "running"

    with pytest.raises(virt.VirtError, match="running; stop it first"):
        virt.undefine_domain(conn, name)

    virt.stop_domain(conn, name, force=True)
    virt.stop_domain(conn, name, force=True)  # already stopped: fine
    assert virt.domain_state(conn, name) == "shutoff"

    virt.undefine_domain(conn, name)
    assert virt.domain_state(conn, name) == "missing"
    virt.undefine_domain(conn, name)  # already gone: fine
    with pytest.raises(virt.VirtError) as caught:
        virt.start_domain(conn, name)
    assert caught.value.code == libvirt.VIR_ERR_NO_DOMAIN


def test_graceful_stop_falls_back_to_destroy(libvirt_backend):
    conn = libvirt_backend.connection()
    name, _disk = new_domain(libvirt_backend, "stop", start=True)

    virt.stop_domain(conn, name, timeout=0.5)

    # The test driver's guest obeys the shutdown request at once; qemu's has no OS to obey the
    # ACPI request, so after the timeout stop_domain destroys it. Both end shut off.
    assert virt.domain_state(conn, name) == "shutoff"


# --- snapshots ------------------------------------------------------------------------------


def test_snapshots(libvirt_backend):
    conn = libvirt_backend.connection()
    name, disk = new_domain(libvirt_backend, "snap")

    assert virt.snapshot_create(conn, name, "s1", description="before the change") == "s1"
    write_pattern(Path(disk), "qcow2", "0x11")
    assert virt.snapshot_create(conn, name, "s2") == "s2"
    assert virt.snapshot_list(conn, name) == ["s1", "s2"]

    virt.snapshot_revert(conn, name, "s1")

    assert virt.domain_state(conn, name) == "shutoff"
    if libvirt_backend.kind == "qemu":
        # Internal snapshots live in the qcow2 file, and the revert really restored the disk.
        assert disk_snapshot_names(disk) == ["s1", "s2"]
        assert_pattern(Path(disk), "qcow2", "0x11", matches=False)
    else:
        # The test driver keeps snapshots as metadata only and never touches the disk.
        assert disk_snapshot_names(disk) == []
        assert_pattern(Path(disk), "qcow2", "0x11")

    virt.snapshot_delete(conn, name, "s2")
    virt.snapshot_delete(conn, name, "s2")  # already gone: fine
    assert virt.snapshot_list(conn, name) == ["s1"]
    if libvirt_backend.kind == "qemu":
        assert disk_snapshot_names(disk) == ["s1"]
    with pytest.raises(virt.VirtError) as caught:
        virt.snapshot_revert(conn, name, "s2")
    assert caught.value.code == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT


def test_snapshot_of_a_running_domain(libvirt_backend):
    conn = libvirt_backend.connection()
    name, _disk = new_domain(libvirt_backend, "live", start=True)

    # Both backends take a snapshot of a running domain (qemu: disks and memory, internally).
    virt.snapshot_create(conn, name, "live")

    assert virt.snapshot_list(conn, name) == ["live"]
    virt.stop_domain(conn, name, force=True)
    virt.snapshot_revert(conn, name, "live")
    assert virt.domain_state(conn, name) == "running"


def test_disk_only_snapshots_depend_on_the_backend(libvirt_backend):
    """We never make DISK_ONLY (external) snapshots: the test driver cannot."""
    conn = libvirt_backend.connection()
    name, _disk = new_domain(libvirt_backend, "ext")
    dom = conn.lookupByName(name)
    xml = "<domainsnapshot><name>ext</name></domainsnapshot>"
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    if libvirt_backend.kind == "test":
        with pytest.raises(libvirt.libvirtError) as caught:
            dom.snapshotCreateXML(xml, flags)
        assert caught.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    else:
        assert dom.snapshotCreateXML(xml, flags).getName() == "ext"


def test_undefine_refused_with_snapshot_metadata(libvirt_backend):
    conn = libvirt_backend.connection()
    name, disk = new_domain(libvirt_backend, "meta")
    virt.snapshot_create(conn, name, "s1")

    with pytest.raises(virt.DomainHasMetadata) as caught:
        virt.undefine_domain(conn, name)

    assert caught.value.snapshots == ["s1"]
    assert caught.value.managed_save is False
    assert "s1" in caught.value.message
    assert virt.domain_state(conn, name) == "shutoff"
    # libvirt itself refuses too, on both backends (we refuse first so the caller gets the list).
    with pytest.raises(libvirt.libvirtError) as raw:
        conn.lookupByName(name).undefine()
    assert raw.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
    assert virt.snapshot_list(conn, name) == ["s1"]

    virt.undefine_domain(conn, name, delete_snapshot_metadata=True)

    assert virt.domain_state(conn, name) == "missing"
    # Only the metadata went: the disk (the snapshot volume) stays, with the snapshot data in it
    # on qemu.
    assert Path(disk).is_file()
    if libvirt_backend.kind == "qemu":
        assert disk_snapshot_names(disk) == ["s1"]


def test_undefine_refused_with_managed_save(libvirt_backend):
    conn = libvirt_backend.connection()
    name, _disk = new_domain(libvirt_backend, "saved")
    virt.snapshot_create(conn, name, "s1")
    virt.start_domain(conn, name)
    dom = conn.lookupByName(name)
    save_image = MANAGED_SAVE_DIR / f"{name}.save"

    # Both backends support managed save of a running domain, and start restores from it.
    dom.managedSave(0)
    assert virt.domain_state(conn, name) == "shutoff"
    assert dom.hasManagedSaveImage(0) == 1
    virt.start_domain(conn, name)
    assert virt.domain_state(conn, name) == "running"
    assert dom.hasManagedSaveImage(0) == 0
    dom.managedSave(0)
    if libvirt_backend.kind == "qemu":
        assert save_image.is_file()

    with pytest.raises(virt.DomainHasMetadata) as caught:
        virt.undefine_domain(conn, name)
    assert caught.value.snapshots == ["s1"]
    assert caught.value.managed_save is True
    with pytest.raises(libvirt.libvirtError) as raw:
        dom.undefine()
    assert raw.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID

    # Allowing only the snapshot metadata is still refused for the managed save, and nothing is
    # dropped: libvirtd, given that flag alone, would delete the snapshot metadata and then
    # refuse, which is why undefine_domain checks first.
    with pytest.raises(virt.DomainHasMetadata) as caught:
        virt.undefine_domain(conn, name, delete_snapshot_metadata=True)
    assert caught.value.snapshots == []
    assert caught.value.managed_save is True
    assert virt.snapshot_list(conn, name) == ["s1"]

    virt.undefine_domain(conn, name, delete_snapshot_metadata=True, delete_managed_save=True)

    assert virt.domain_state(conn, name) == "missing"
    if libvirt_backend.kind == "qemu":
        assert not save_image.exists()


# --- connections ----------------------------------------------------------------------------


def test_connection_is_cached_per_process(libvirt_backend):
    uri = libvirt_backend.uri
    first = virt.connection(uri)
    assert virt.connection(uri) is first
    name, _disk = new_domain(libvirt_backend, "cached")

    virt.close_connections()

    second = virt.connection(uri)
    assert second is not first
    assert virt.connection(uri) is second
    if libvirt_backend.kind == "test":
        # A new connection to a test:///file.xml URI re-reads the file: the state is gone.
        assert virt.domain_state(second, name) == "missing"
    else:
        assert virt.domain_state(second, name) == "shutoff"


def test_a_forked_child_opens_its_own_connection(libvirt_backend):
    uri = libvirt_backend.uri
    parent_conn = virt.connection(uri)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        status = 1
        try:
            child_conn = virt.connection(uri)
            ok = child_conn is not parent_conn and child_conn.getLibVersion() > 0
            # Dropping the inherited objects must not close the parent's connection.
            virt._inherited.clear()
            gc.collect()
            status = 0 if ok else 2
        finally:
            os.write(write_fd, bytes([status]))
            os._exit(status)
    os.close(write_fd)
    try:
        reported = os.read(read_fd, 1)
    finally:
        os.close(read_fd)
    _pid, exit_status = os.waitpid(pid, 0)
    assert reported == b"\x00"
    assert os.waitstatus_to_exitcode(exit_status) == 0
    assert virt.connection(uri) is parent_conn
    assert parent_conn.isAlive() == 1
    assert parent_conn.getLibVersion() > 0
    assert virt.pool_info(parent_conn, libvirt_backend.pool_name).path
