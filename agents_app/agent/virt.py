"""The libvirt layer of the KVM agents: connections, pools, volumes, domains and snapshots.

Everything here goes through libvirt-python and works on two backends: a real libvirtd
(`qemu:///system`) on a KVM host, and libvirt's in-process test driver (`test:///ABS/node.xml`,
see `write_test_node_xml`) where no daemon is available. No Django models, no database.

Facts this module is built on (checked on libvirt 9.0 with both backends):

- The test driver never touches disk: `pool.createXML` records a volume but creates no file, and
  `pool.refresh` finds no file. So callers always write a volume's bytes themselves with
  qemu-img (`write_overlay`, `write_full_copy`); real libvirtd creates a file that we overwrite
  (its own qcow2 is made with compat=0.10, ours with qemu-img's current default).
- Each open of a `test:///file.xml` URI re-reads the file into private state, so `connection`
  keeps one connection per URI and process: that is what makes test-driver state persist.
- Both backends refuse to undefine an inactive domain that has snapshot metadata or a managed
  save image (VIR_ERR_OPERATION_INVALID) unless given the matching flag. Real libvirtd given
  only VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA deletes the snapshot metadata *before* refusing
  because of a managed save, so `undefine_domain` checks both itself first and refuses without
  calling libvirt (seed 004: metadata is never dropped unless the caller asked for it).
- Snapshots: internal snapshots (VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC) work on both backends, of
  shut-off and of running domains (qcow2 disks on qemu, where the snapshot lives inside the
  qcow2 file; the test driver keeps metadata only). DISK_ONLY (external) snapshots are
  unsupported on the test driver (VIR_ERR_INVALID_ARG); we never make them.
- Managed save (`dom.managedSave()`) works on both backends for a running domain.

Every libvirt.libvirtError leaving this module is wrapped in a VirtError.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import urllib.parse
import uuid as uuid_lib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from templates_app.images import qcow2
from templates_app.images.inspection import inspect_image
from templates_app.images.qemu import (
    qemu_format,
    qemu_img_convert,
    qemu_img_create_overlay,
    qemu_img_info,
)

# libvirt's default error handler prints every error on stderr, including the ones we expect
# and handle (a missing domain on an idempotent undefine): the exceptions carry them anyway.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# How often stop_domain polls a guest that was asked to shut down.
_STOP_POLL_SECONDS = 0.2

_DOMAIN_STATES: dict[int, str] = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


# --- errors ---------------------------------------------------------------------------------


class VirtError(Exception):
    """A libvirt call failed or was refused.

    `message` names what we were doing and includes libvirt's message; `code` is libvirt's
    error code (libvirt.VIR_ERR_*) or None when the refusal is ours.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class DomainHasMetadata(VirtError):
    """Undefine refused: the domain has snapshot metadata or a managed save image.

    `snapshots` lists the snapshots that block (empty when the caller allowed deleting their
    metadata); `managed_save` is True when a managed save image blocks.
    """

    def __init__(self, domain: str, *, snapshots: list[str], managed_save: bool) -> None:
        parts = []
        if snapshots:
            parts.append(f"snapshots {', '.join(snapshots)} (delete_snapshot_metadata)")
        if managed_save:
            parts.append("a managed save image (delete_managed_save)")
        super().__init__(
            f"refusing to undefine domain {domain}: it has {' and '.join(parts)}",
            libvirt.VIR_ERR_OPERATION_INVALID,
        )
        self.snapshots = snapshots
        self.managed_save = managed_save


def _error_code(exc: libvirt.libvirtError) -> int | None:
    try:
        return exc.get_error_code()
    except Exception:  # pragma: no cover - a libvirtError always has an error code
        return None


@contextlib.contextmanager
def _libvirt(action: str) -> Iterator[None]:
    """Turn a libvirt.libvirtError raised in the block into a VirtError naming the action."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise VirtError(f"{action}: {exc}", _error_code(exc)) from exc


# --- connections ------------------------------------------------------------------------------

_connections: dict[str, libvirt.virConnect] = {}
_connections_lock = threading.Lock()
# Connections inherited across a fork, kept referenced so that they are never closed (see
# _forget_connections_after_fork).
_inherited: list[libvirt.virConnect] = []


def connection(uri: str) -> libvirt.virConnect:
    """Return this process's one connection to uri, opening (or re-opening a dead) one.

    libvirt connections are thread-safe, so threads share it. One per process and URI is also
    what makes a `test:///file.xml` backend keep its state between calls.
    """
    with _connections_lock:
        conn = _connections.get(uri)
        if conn is not None:
            try:
                alive = conn.isAlive() == 1
            except libvirt.libvirtError:
                alive = False
            if alive:
                return conn
            # The daemon restarted or the socket broke: drop it and open a new one.
            _connections.pop(uri, None)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        with _libvirt(f"cannot connect to {uri}"):
            conn = libvirt.open(uri)
        _connections[uri] = conn
        return conn


def close_connections(uri: str | None = None) -> None:
    """Close this process's connection to uri, or all of them (shutdown, tests)."""
    with _connections_lock:
        uris = [uri] if uri is not None else list(_connections)
        for key in uris:
            conn = _connections.pop(key, None)
            if conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()


def _forget_connections_after_fork() -> None:
    """In a forked child (Celery prefork), forget the parent's connections without closing them.

    A remote connection's socket is shared with the parent after fork: closing it here would
    send a close message on the parent's connection. So the child keeps the objects referenced
    (their __del__ would close them) and detaches them from their C handles, opening its own
    connections on first use. The lock is replaced: another thread may have held it at fork.
    This also runs in the children that subprocess forks for a preexec_fn
    (templates_app.images.qemu), between fork and exec: it touches Python objects only, never
    libvirt.
    """
    global _connections_lock
    _connections_lock = threading.Lock()
    for conn in _connections.values():
        _inherited.append(conn)
        # libvirt-python's virConnect.__del__ closes only when _o (the C handle) is set.
        with contextlib.suppress(AttributeError):
            conn._o = None
    _connections.clear()


os.register_at_fork(after_in_child=_forget_connections_after_fork)


# --- pools --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolInfo:
    """A storage pool as libvirt sees it; sizes in bytes."""

    name: str
    path: str
    capacity: int
    allocation: int
    available: int


def _pool(conn: libvirt.virConnect, pool_name: str) -> libvirt.virStoragePool:
    with _libvirt(f"storage pool {pool_name}"):
        return conn.storagePoolLookupByName(pool_name)


def _pool_path(pool: libvirt.virStoragePool) -> str:
    with _libvirt(f"storage pool {pool.name()}"):
        desc = pool.XMLDesc(0)
    path = ET.fromstring(desc).findtext("target/path")
    if not path:
        raise VirtError(f"storage pool {pool.name()} has no target path")
    return path


def pool_info(conn: libvirt.virConnect, pool_name: str) -> PoolInfo:
    """Return the pool's target directory and sizes."""
    pool = _pool(conn, pool_name)
    with _libvirt(f"storage pool {pool_name}"):
        _state, capacity, allocation, available = pool.info()
    return PoolInfo(pool_name, _pool_path(pool), capacity, allocation, available)


def refresh_pool(conn: libvirt.virConnect, pool_name: str) -> None:
    """Make libvirt re-read the pool's directory (volumes, sizes, backing files)."""
    pool = _pool(conn, pool_name)
    with _libvirt(f"cannot refresh storage pool {pool_name}"):
        pool.refresh(0)


def _find_volume(pool: libvirt.virStoragePool, vol_name: str) -> libvirt.virStorageVol | None:
    try:
        return pool.storageVolLookupByName(vol_name)
    except libvirt.libvirtError as exc:
        if _error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise VirtError(
            f"volume {vol_name} in pool {pool.name()}: {exc}", _error_code(exc)
        ) from exc


def volume_path(conn: libvirt.virConnect, pool_name: str, vol_name: str) -> str | None:
    """Return the volume's path, or None when the pool has no such volume."""
    vol = _find_volume(_pool(conn, pool_name), vol_name)
    if vol is None:
        return None
    with _libvirt(f"volume {vol_name} in pool {pool_name}"):
        return vol.path()


# --- volumes ------------------------------------------------------------------------------


def _check_volume_name(vol_name: str) -> None:
    # The name becomes a file name in the pool directory, and delete_volume removes that file:
    # a name must never reach outside the directory. (The test driver does not check this.)
    if not vol_name or vol_name in (".", "..") or "/" in vol_name or "\0" in vol_name:
        raise VirtError(f"invalid volume name {vol_name!r}")


def _volume_xml(vol_name: str, *, capacity: int, fmt: str, backing: tuple[str, str] | None) -> str:
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = vol_name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(int(capacity))
    # Allocation 0: real libvirtd would otherwise preallocate a raw file to its full capacity,
    # only for us to overwrite it.
    ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", type=qemu_format(fmt))
    if backing is not None:
        backing_path, backing_format = backing
        store = ET.SubElement(volume, "backingStore")
        ET.SubElement(store, "path").text = str(Path(backing_path).absolute())
        ET.SubElement(store, "format", type=qemu_format(backing_format))
    return ET.tostring(volume, encoding="unicode")


def create_volume(
    conn: libvirt.virConnect,
    pool_name: str,
    vol_name: str,
    *,
    capacity: int,
    fmt: str,
    backing: tuple[str, str] | None = None,
) -> str:
    """Create the volume record (pool.createXML) and return its path.

    fmt and the backing format are our format names or qemu's ("QCOW2", "qcow2", "raw", "vhd"…).
    backing is (path, format). The caller writes the bytes at the returned path itself and then
    calls refresh_pool: prefer write_overlay / write_full_copy, which do all of it.
    Raises VirtError when the name is taken (code VIR_ERR_STORAGE_VOL_EXIST on libvirtd,
    VIR_ERR_OPERATION_FAILED on the test driver).
    """
    _check_volume_name(vol_name)
    pool = _pool(conn, pool_name)
    xml = _volume_xml(vol_name, capacity=capacity, fmt=fmt, backing=backing)
    with _libvirt(f"cannot create volume {vol_name} in pool {pool_name}"):
        vol = pool.createXML(xml, 0)
        return vol.path()


def _remove_file(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def delete_volume(conn: libvirt.virConnect, pool_name: str, vol_name: str) -> None:
    """Delete the volume and its file. A missing volume is fine (idempotent).

    The file is removed even when libvirt did not (the test driver never touches disk) or no
    longer knows the volume (a worker died between writing the file and refreshing the pool).
    """
    _check_volume_name(vol_name)
    pool = _pool(conn, pool_name)
    path = os.path.join(_pool_path(pool), vol_name)
    vol = _find_volume(pool, vol_name)
    if vol is not None:
        with _libvirt(f"cannot delete volume {vol_name} in pool {pool_name}"):
            path = vol.path()
            try:
                vol.delete(0)
            except libvirt.libvirtError as exc:
                # Deleted by someone else in between: that is what we wanted.
                if _error_code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
    _remove_file(path)


def _discard(conn: libvirt.virConnect, pool_name: str, vol_name: str, path: str) -> None:
    """Best-effort cleanup after a failed write: no volume and no partial file may remain."""
    with contextlib.suppress(VirtError):
        delete_volume(conn, pool_name, vol_name)
    _remove_file(path)
    with contextlib.suppress(VirtError):
        refresh_pool(conn, pool_name)


def _virtual_size(path: str, image_format: str) -> int:
    return int(qemu_img_info(Path(path), image_format)["virtual-size"])


def _write_overlay_file(path: Path, backing: Path, backing_format: str, size: int) -> None:
    """The overlay's few metadata clusters, written here (templates_app.images.qcow2); what
    that writer does not cover (e.g. a backing format other than qcow2 or raw) by qemu-img."""
    qemu_backing_format = qemu_format(backing_format)
    if qcow2.supported(backing=str(backing), backing_format=qemu_backing_format, size=size):
        qcow2.write_overlay(
            path, backing=str(backing), backing_format=qemu_backing_format, size=size
        )
    else:
        qemu_img_create_overlay(path, backing, backing_format, size=size)


def write_overlay(
    conn: libvirt.virConnect,
    pool_name: str,
    vol_name: str,
    *,
    backing_path: str,
    backing_format: str,
    capacity: int | None,
) -> str:
    """Create a qcow2 volume whose backing file is backing_path; return its path.

    capacity is the overlay's virtual size in bytes; 0 or None means the backing file's. On any
    failure the volume and its file are removed and the error (VirtError, QemuImgError,
    OSError) propagates.
    """
    if not capacity:
        capacity = _virtual_size(backing_path, backing_format)
    path = create_volume(
        conn,
        pool_name,
        vol_name,
        capacity=capacity,
        fmt="qcow2",
        backing=(backing_path, backing_format),
    )
    try:
        _write_overlay_file(Path(path), Path(backing_path).absolute(), backing_format, capacity)
        refresh_pool(conn, pool_name)
    except BaseException:
        _discard(conn, pool_name, vol_name, path)
        raise
    return path


def write_full_copy(
    conn: libvirt.virConnect,
    pool_name: str,
    vol_name: str,
    *,
    source_path: str,
    source_format: str,
    fmt: str,
    capacity: int | None,
) -> str:
    """Create a volume of format fmt holding a full copy of source_path; return its path.

    The copy has no backing file. capacity is what libvirt records until the refresh (the copy
    keeps the source's virtual size); 0 or None reads it from the source. The source is
    inspected again first (ImageRejected, nothing written, when it fails or when qemu-img
    measure says the copy would not fit in the pool's free space). On any failure the volume
    and any partial file are removed and the error (VirtError, QemuImgError, OSError)
    propagates.
    """
    # The source passed inspection when it was stored, perhaps by an older inspector: before a
    # byte is written it must still pass, and what it expands to must fit in the pool.
    free = pool_info(conn, pool_name).available
    inspected = inspect_image(
        Path(source_path),
        source_format,
        room=free,
        room_name=f"the free space of pool '{pool_name}'",
        output_format=fmt,
    )
    capacity = capacity or inspected.virtual_size
    path = create_volume(conn, pool_name, vol_name, capacity=capacity, fmt=fmt)
    try:
        qemu_img_convert(Path(source_path), source_format, Path(path), fmt)
        refresh_pool(conn, pool_name)
    except BaseException:
        _discard(conn, pool_name, vol_name, path)
        raise
    return path


# --- domains ------------------------------------------------------------------------------


def domain_xml(
    *,
    name: str,
    uuid: str,
    memory_mib: int,
    vcpus: int,
    disk_path: str,
    disk_format: str,
    domain_type: str = "kvm",
) -> str:
    """Return the XML of a KVM-style domain with one virtio disk and no network.

    domain_type is 'kvm' on a KVM host, 'qemu' where qemu must emulate (no usable /dev/kvm),
    'test' on the test driver. disk_format is our or qemu's format name.
    """
    domain = ET.Element("domain", type=domain_type)
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "uuid").text = str(uuid_lib.UUID(str(uuid)))
    ET.SubElement(domain, "memory", unit="MiB").text = str(int(memory_mib))
    ET.SubElement(domain, "vcpu").text = str(int(vcpus))
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", arch="x86_64").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    # ACPI: a guest can only be asked to shut down or reboot (stop_domain) through it.
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(domain, "clock", offset="utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    # A crashed guest is stopped, not restarted in a loop: the agent reports it.
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=qemu_format(disk_format))
    ET.SubElement(disk, "source", file=str(Path(disk_path).absolute()))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    return ET.tostring(domain, encoding="unicode")


def _find_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if _error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise VirtError(f"domain {name}: {exc}", _error_code(exc)) from exc


def _domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    with _libvirt(f"domain {name}"):
        return conn.lookupByName(name)


def define_domain(conn: libvirt.virConnect, xml: str) -> str:
    """Define (or redefine) a persistent domain from xml; return its name."""
    with _libvirt("cannot define domain"):
        return conn.defineXML(xml).name()


def start_domain(conn: libvirt.virConnect, name: str) -> None:
    """Start the domain (restoring its managed save image if it has one); running is fine."""
    dom = _domain(conn, name)
    with _libvirt(f"cannot start domain {name}"):
        if dom.isActive():
            return
        dom.create()


def stop_domain(
    conn: libvirt.virConnect, name: str, *, force: bool = False, timeout: float = 60
) -> None:
    """Stop the domain; a domain that is not running is fine.

    force destroys it at once (power off). Otherwise the guest is asked to shut down (ACPI)
    and destroyed if it has not stopped within timeout seconds.
    """
    dom = _domain(conn, name)
    with _libvirt(f"cannot stop domain {name}"):
        if not dom.isActive():
            return
        if not force:
            with contextlib.suppress(libvirt.libvirtError):
                dom.shutdown()
            deadline = time.monotonic() + timeout
            while dom.isActive() and time.monotonic() < deadline:
                time.sleep(_STOP_POLL_SECONDS)
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            # It stopped by itself between the check and destroy.
            if dom.isActive():
                raise


def reboot_domain(conn: libvirt.virConnect, name: str) -> None:
    """Ask the running guest to reboot (libvirt's default method: ACPI or guest agent)."""
    dom = _domain(conn, name)
    with _libvirt(f"cannot reboot domain {name}"):
        dom.reboot(0)


def domain_state(conn: libvirt.virConnect, name: str) -> str:
    """Return 'running', 'shutoff', 'paused', … ('missing' when no such domain)."""
    dom = _find_domain(conn, name)
    if dom is None:
        return "missing"
    try:
        state, _reason = dom.state(0)
    except libvirt.libvirtError as exc:
        if _error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return "missing"
        raise VirtError(f"domain {name}: {exc}", _error_code(exc)) from exc
    return _DOMAIN_STATES.get(state, "unknown")


def domain_states(conn: libvirt.virConnect) -> dict[str, str]:
    """Every domain (active or not) by name, with its state: one listAllDomains call."""
    with _libvirt("cannot list domains"):
        domains = conn.listAllDomains(0)
        found = {}
        for dom in domains:
            try:
                state, _reason = dom.state(0)
            except libvirt.libvirtError as exc:
                if _error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined while we listed
                raise
            found[dom.name()] = _DOMAIN_STATES.get(state, "unknown")
    return found


def _blocking_metadata(
    dom: libvirt.virDomain, *, delete_snapshot_metadata: bool, delete_managed_save: bool
) -> tuple[list[str], bool]:
    """Return (snapshots, managed_save) that would make undefine refuse without its flag."""
    snapshots = [] if delete_snapshot_metadata else _snapshot_names(dom)
    managed_save = not delete_managed_save and dom.hasManagedSaveImage(0) == 1
    return snapshots, managed_save


def undefine_domain(
    conn: libvirt.virConnect,
    name: str,
    *,
    delete_snapshot_metadata: bool = False,
    delete_managed_save: bool = False,
) -> None:
    """Undefine a shut-off domain. A missing domain is fine (idempotent).

    Refuses (DomainHasMetadata, libvirt not called) while the domain has snapshots or a managed
    save image that the caller did not ask to delete (seed 004). delete_snapshot_metadata drops
    libvirt's snapshot metadata only: the snapshot data stays in the disk images, which this
    function never deletes. A running domain is refused: stop it first (undefining it would
    leave a transient domain running).
    """
    dom = _find_domain(conn, name)
    if dom is None:
        return
    try:
        if dom.isActive():
            raise VirtError(f"refusing to undefine domain {name}: it is running; stop it first")
        snapshots, managed_save = _blocking_metadata(
            dom,
            delete_snapshot_metadata=delete_snapshot_metadata,
            delete_managed_save=delete_managed_save,
        )
        if snapshots or managed_save:
            raise DomainHasMetadata(name, snapshots=snapshots, managed_save=managed_save)
        flags = 0
        if delete_snapshot_metadata:
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        if delete_managed_save:
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        dom.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        code = _error_code(exc)
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            return
        if code == libvirt.VIR_ERR_OPERATION_INVALID:
            # A snapshot or managed save appeared after our check: report it like ours.
            with contextlib.suppress(libvirt.libvirtError):
                snapshots, managed_save = _blocking_metadata(
                    dom,
                    delete_snapshot_metadata=delete_snapshot_metadata,
                    delete_managed_save=delete_managed_save,
                )
                if snapshots or managed_save:
                    raise DomainHasMetadata(
                        name, snapshots=snapshots, managed_save=managed_save
                    ) from exc
        raise VirtError(f"cannot undefine domain {name}: {exc}", code) from exc


# --- snapshots ----------------------------------------------------------------------------


def _snapshot_names(dom: libvirt.virDomain) -> list[str]:
    """Names of the domain's snapshots, oldest first (creation time, then name)."""
    keyed = []
    for snap in dom.listAllSnapshots(0):
        created = ET.fromstring(snap.getXMLDesc(0)).findtext("creationTime") or "0"
        keyed.append((int(created), snap.getName()))
    return [name for _created, name in sorted(keyed)]


def snapshot_create(
    conn: libvirt.virConnect, dom_name: str, snap_name: str, *, description: str = ""
) -> str:
    """Take an internal snapshot of the domain (disks, plus memory when running); return its name.

    On qemu the disks must be qcow2. Shut the domain off first for a disk-only state: that is
    what the agents do.
    """
    dom = _domain(conn, dom_name)
    snapshot = ET.Element("domainsnapshot")
    ET.SubElement(snapshot, "name").text = snap_name
    if description:
        ET.SubElement(snapshot, "description").text = description
    with _libvirt(f"cannot create snapshot {snap_name} of domain {dom_name}"):
        # ATOMIC: on failure qemu leaves no half-made snapshot behind.
        snap = dom.snapshotCreateXML(
            ET.tostring(snapshot, encoding="unicode"),
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC,
        )
        return snap.getName()


def snapshot_list(conn: libvirt.virConnect, dom_name: str) -> list[str]:
    """Return the names of the domain's snapshots, oldest first."""
    dom = _domain(conn, dom_name)
    with _libvirt(f"cannot list snapshots of domain {dom_name}"):
        return _snapshot_names(dom)


def snapshot_revert(conn: libvirt.virConnect, dom_name: str, snap_name: str) -> None:
    """Revert the domain to the snapshot (and to its state: shut off or running)."""
    dom = _domain(conn, dom_name)
    with _libvirt(f"cannot revert domain {dom_name} to snapshot {snap_name}"):
        dom.revertToSnapshot(dom.snapshotLookupByName(snap_name, 0), 0)


def snapshot_delete(
    conn: libvirt.virConnect, dom_name: str, snap_name: str, *, metadata_only: bool = False
) -> None:
    """Delete the snapshot (its data in the disks too, unless metadata_only); missing is fine."""
    dom = _domain(conn, dom_name)
    with _libvirt(f"cannot delete snapshot {snap_name} of domain {dom_name}"):
        try:
            snap = dom.snapshotLookupByName(snap_name, 0)
        except libvirt.libvirtError as exc:
            if _error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                return
            raise
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY if metadata_only else 0
        snap.delete(flags)


# --- test driver --------------------------------------------------------------------------


def write_test_node_xml(path: Path, *, pools: dict[str, Path]) -> str:
    """Write a test-driver node XML with one active `dir` pool per entry; return its URI.

    pools maps pool names to existing directories (their targets). Sizes come from the
    directory's file system. The test driver keeps the state in memory only: open the URI
    through `connection` so that one process keeps one state.
    """
    node = ET.Element("node")
    for name, directory in pools.items():
        target_dir = Path(directory).absolute()
        usage = shutil.disk_usage(target_dir)
        pool = ET.SubElement(node, "pool", type="dir")
        ET.SubElement(pool, "name").text = name
        ET.SubElement(pool, "capacity", unit="bytes").text = str(usage.total)
        ET.SubElement(pool, "allocation", unit="bytes").text = str(usage.used)
        ET.SubElement(pool, "available", unit="bytes").text = str(usage.free)
        target = ET.SubElement(pool, "target")
        ET.SubElement(target, "path").text = str(target_dir)
    ET.indent(node)
    path = Path(path).absolute()
    path.write_text(ET.tostring(node, encoding="unicode") + "\n")
    # test:// + an absolute path gives test:///abs/path; quoted so that odd characters survive.
    return "test://" + urllib.parse.quote(str(path), safe="/")
