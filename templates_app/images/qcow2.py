"""qcow2 overlays written directly: a backing file and a virtual size, no data.

A linked-clone deploy needs an empty qcow2 image on top of the template's pool copy. Its
metadata is four small structures (qcow2 specification, version 3, docs/interop/qcow2.txt in
QEMU): the header with its extensions and the backing file's name (cluster 0), the refcount
table (cluster 1), one refcount block (cluster 2) and the L1 table (cluster 3 on, all entries
zero: every read goes to the backing file). Writing them here takes a fraction of a
millisecond; spawning `qemu-img create` for them took 15-20 ms per deploy. The layout is the
one `qemu-img create -f qcow2 -b … -F …` of QEMU 7.2 writes, without the optional feature
name table; `qemu-img check` and `qemu-img info` accept it (tests/templates_app/test_qcow2.py).

Only what this layout covers is written here (`supported` says so); anything else (another
cluster size, a name too long for cluster 0, a backing format qcow2 cannot name) goes to
qemu-img (`templates_app.images.qemu.qemu_img_create_overlay`).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from .qemu import QemuImgError

MAGIC = b"QFI\xfb"
VERSION = 3
CLUSTER_BITS = 16
CLUSTER_SIZE = 1 << CLUSTER_BITS
REFCOUNT_ORDER = 4  # 16-bit refcounts, as qemu-img writes by default
HEADER_LENGTH = 112  # the v3 header with its compression type byte, padded to 8
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_END = 0
L2_ENTRIES = CLUSTER_SIZE // 8  # one L1 entry maps this many clusters
REFCOUNT_TABLE_OFFSET = 1 * CLUSTER_SIZE
REFCOUNT_BLOCK_OFFSET = 2 * CLUSTER_SIZE
L1_TABLE_OFFSET = 3 * CLUSTER_SIZE
REFCOUNTS_PER_BLOCK = CLUSTER_SIZE * 8 // (1 << REFCOUNT_ORDER)
# Backing formats an overlay here may name (qemu's driver names, as `-F` takes them).
BACKING_FORMATS = frozenset({"qcow2", "raw"})
MAX_BACKING_NAME = 1023  # qemu's limit on the backing file name


class BackingFileRejected(QemuImgError):
    """The backing file is missing or not of the format the overlay would name (qemu-img
    create, which opens the backing file, refuses those too)."""


def check_backing(backing: str, backing_format: str) -> None:
    """The backing file opens, and a qcow2 one starts with qcow2's magic and a known version.
    (The pool copy was inspected when it was made; this catches a file that vanished or was
    replaced since, before a VM is put on it.)"""
    try:
        with open(backing, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise BackingFileRejected(f"cannot open backing file {backing}: {exc.strerror}") from None
    if backing_format == "qcow2" and (
        head[:4] != MAGIC or struct.unpack(">I", head[4:8].rjust(4, b"\0"))[0] not in (2, 3)
    ):
        raise BackingFileRejected(f"backing file {backing}: image is not in qcow2 format")


def _pad8(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 8)


def _extension(kind: int, data: bytes) -> bytes:
    return struct.pack(">II", kind, len(data)) + _pad8(data)


def _l1_size(size: int) -> int:
    clusters = -(-size // CLUSTER_SIZE)
    return -(-clusters // L2_ENTRIES)


def _l1_clusters(size: int) -> int:
    return max(1, -(-_l1_size(size) * 8 // CLUSTER_SIZE))


def supported(*, backing: str, backing_format: str, size: int) -> bool:
    """This module can write the overlay (else: qemu-img)."""
    name = os.fsencode(backing)
    return (
        backing_format in BACKING_FORMATS
        and os.path.isabs(backing)
        and 0 < len(name) <= MAX_BACKING_NAME
        and b"\0" not in name
        and size > 0
        # Every cluster of metadata is counted by the one refcount block.
        and 3 + _l1_clusters(size) <= REFCOUNTS_PER_BLOCK
    )


def overlay_bytes(*, backing: str, backing_format: str, size: int) -> tuple[bytes, int]:
    """The overlay's metadata clusters 0-2 (header, refcount table and block) and the length
    of the whole file (the L1 table after them is all zeros: the file is extended to it)."""
    size = -(-size // 512) * 512  # qemu-img rounds a virtual size up to whole sectors
    l1_size = _l1_size(size)
    clusters = 3 + _l1_clusters(size)
    name = os.fsencode(backing)
    extensions = _extension(EXT_BACKING_FORMAT, backing_format.encode()) + _extension(EXT_END, b"")
    backing_offset = HEADER_LENGTH + len(extensions)
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQIIB7x",
        MAGIC,
        VERSION,
        backing_offset,
        len(name),
        CLUSTER_BITS,
        size,
        0,  # crypt_method: none
        l1_size,
        L1_TABLE_OFFSET,
        REFCOUNT_TABLE_OFFSET,
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible_features
        0,  # compatible_features
        0,  # autoclear_features
        REFCOUNT_ORDER,
        HEADER_LENGTH,
        0,  # compression_type: zlib
    )
    assert len(header) == HEADER_LENGTH
    first = header + extensions + name
    refcount_table = struct.pack(">Q", REFCOUNT_BLOCK_OFFSET)
    refcount_block = struct.pack(f">{clusters}H", *([1] * clusters))
    metadata = (
        first.ljust(CLUSTER_SIZE, b"\0")
        + refcount_table.ljust(CLUSTER_SIZE, b"\0")
        + refcount_block.ljust(CLUSTER_SIZE, b"\0")
    )
    return metadata, L1_TABLE_OFFSET + l1_size * 8


def write_overlay(path: Path, *, backing: str, backing_format: str, size: int) -> None:
    """Write the qcow2 file at `path` over `backing` (an absolute path, of qemu format
    `backing_format`), of virtual size `size`; the bytes reach the disk before this returns.
    A file already at `path` is replaced, as `qemu-img create` does (real libvirtd writes one
    when the volume is created). A failure removes the file; BackingFileRejected before
    anything is written (`check_backing`)."""
    check_backing(backing, backing_format)
    metadata, length = overlay_bytes(backing=backing, backing_format=backing_format, size=size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(metadata)
            while view:
                view = view[os.write(fd, view) :]
            os.ftruncate(fd, length)  # the zero L1 table, as a hole
            os.fdatasync(fd)
        finally:
            os.close(fd)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
