"""Hostile qcow2 images for tests, made with the real qemu-img and qemu-io and then edited
with struct where qemu would never write such metadata.

The qcow2 layout these edits rely on (docs/interop/qcow2.txt in QEMU; big-endian):

    header  offset 20  cluster_bits (u32)        offset 24  virtual size (u64)
            offset 36  l1_size (u32)             offset 40  l1_table_offset (u64)
    L1 table: l1_size u64 entries; bits 9-55 of an entry are the offset of an L2 table
    L2 table: one cluster of u64 entries (cluster_size / 8), one per guest cluster; bits 9-55
              are the host offset of the data cluster, bit 63 (OFLAG_COPIED) says its refcount
              is exactly 1, bit 62 marks a compressed cluster

A fresh `qemu-img create` image has an empty L1 table; one `qemu-io write` of the first
cluster allocates an L2 table and one data cluster, which the edits below then multiply.
"""

import struct
import subprocess
from pathlib import Path

OFFSET_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
MiB = 1 << 20


def _create(path: Path, virtual_size: str, cluster_size: int) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster_size}"]
        + [str(path), virtual_size],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0xab 0 {cluster_size}", str(path)],
        check=True,
        capture_output=True,
    )


def _tables(f) -> tuple[int, int, int, int]:
    """(cluster_size, l1_size, l1_offset, offset of the L2 table of L1 entry 0)."""
    f.seek(0)
    header = f.read(104)
    (cluster_bits,) = struct.unpack_from(">I", header, 20)
    l1_size, l1_offset = struct.unpack_from(">IQ", header, 36)
    f.seek(l1_offset)
    (first_l1,) = struct.unpack(">Q", f.read(8))
    return 1 << cluster_bits, l1_size, l1_offset, first_l1 & OFFSET_MASK


def shared_cluster(path: Path) -> Path:
    """512 MiB virtual, 64 KiB clusters, a file of 384 KiB: every one of the 8192 entries of
    its one L2 table names the same data cluster (refcount 1, referenced 8192 times). A
    convert would write 512 MiB; `qemu-img check` reports the refcount as a corruption."""
    _create(path, "512M", 64 << 10)
    with open(path, "r+b") as f:
        cluster_size, _l1_size, _l1_offset, l2_offset = _tables(f)
        f.seek(l2_offset)
        (first,) = struct.unpack(">Q", f.read(8))
        f.seek(l2_offset)
        f.write(struct.pack(">Q", first) * (cluster_size // 8))
    return path


def claims_past_end(path: Path) -> Path:
    """1 TiB virtual, 2 MiB clusters, a 12 MiB file whose one L2 table claims 262144 distinct
    data clusters (512 GiB allocated) from the first data cluster on, almost all past the end
    of the file. `qemu-img check` reports references past the end as corruptions."""
    _create(path, "1T", 2 * MiB)
    with open(path, "r+b") as f:
        cluster_size, _l1_size, _l1_offset, l2_offset = _tables(f)
        f.seek(l2_offset)
        (first,) = struct.unpack(">Q", f.read(8))
        base = first & OFFSET_MASK
        entries = cluster_size // 8
        f.seek(l2_offset)
        f.write(
            b"".join(struct.pack(">Q", (base + i * cluster_size) | COPIED) for i in range(entries))
        )
    return path


def claims_64_tib(path: Path) -> Path:
    """64 TiB virtual, 2 MiB clusters, a 12 MiB file: all 128 L1 entries name one L2 table
    whose 262144 entries all name one data cluster, so the metadata claims 64 TiB allocated.
    Refused by our own L1 check (shared L2 table) before qemu-img check walks 33 million
    entries; and, by default, by STENCIL_MAX_VIRTUAL_SIZE."""
    _create(path, "64T", 2 * MiB)
    with open(path, "r+b") as f:
        cluster_size, l1_size, l1_offset, l2_offset = _tables(f)
        f.seek(l2_offset)
        (first,) = struct.unpack(">Q", f.read(8))
        f.seek(l2_offset)
        f.write(struct.pack(">Q", first) * (cluster_size // 8))
        f.seek(l1_offset)
        (first_l1,) = struct.unpack(">Q", f.read(8))
        f.seek(l1_offset)
        f.write(struct.pack(">Q", first_l1) * l1_size)
    return path


def compressed(path: Path, size_mib: int = 64) -> Path:
    """A consistent qcow2 (qemu-img check is clean) of `size_mib` MiB of one byte pattern,
    every cluster compressed: a file of about 400 KiB that qemu-img measure says needs
    `size_mib` MiB once written out (what a convert onto a pool writes)."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -c -P 0x33 0 {size_mib}M", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def good(path: Path) -> Path:
    """A plain 16 MiB qcow2 with 1 MiB of data."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def huge(path: Path, virtual_size: str = "4T") -> Path:
    """A clean, empty qcow2 of a large virtual size (a few hundred KiB of file)."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), virtual_size],
        check=True,
        capture_output=True,
    )
    return path
