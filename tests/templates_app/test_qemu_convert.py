"""qemu-img convert's cache modes: a full copy (a template's pool copy, a VM's exported disk) is
written past the host's page cache where the file system takes O_DIRECT, and still completes,
flushed, where it does not (ramfs, mounted here for the test: this suite runs as root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from templates_app.images.qemu import qemu_img_convert, run_qemu_img

MiB = 1 << 20
SIZE = 64 * MiB


def _random_raw(path: Path) -> Path:
    with open(path, "wb") as f:
        for _ in range(SIZE // MiB):
            f.write(os.urandom(MiB))
        os.fsync(f.fileno())
    return path


def _resident_bytes(path: Path) -> int:
    """Bytes of the file in the page cache (util-linux's fincore)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip())


def _identical(raw: Path, qcow2: Path) -> bool:
    result = run_qemu_img(["compare", "-f", "raw", "-F", "qcow2", str(raw), str(qcow2)])
    return "Images are identical" in result.stdout


@contextlib.contextmanager
def _ramfs(folder: Path):
    """A file system without O_DIRECT (ramfs has no direct I/O at all)."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_copy_is_complete_and_leaves_the_host_page_cache_alone(tmp_path):
    source = _random_raw(tmp_path / "source.raw")
    copy = tmp_path / "copy.qcow2"

    qemu_img_convert(source, "RAW", copy, "QCOW2")

    # Written with O_DIRECT: at most qcow2 metadata stays cached, not the 64 MiB of data
    # (measured before the comparison, which reads the copy through the cache).
    assert _resident_bytes(copy) < 4 * MiB
    assert _identical(source, copy)


def test_a_full_copy_onto_a_file_system_without_direct_io_is_complete(tmp_path):
    with _ramfs(tmp_path / "ramfs") as folder:
        source = _random_raw(folder / "source.raw")
        copy = folder / "copy.qcow2"

        qemu_img_convert(source, "RAW", copy, "QCOW2")

        assert _identical(source, copy)


def test_a_full_copy_from_a_direct_io_store_onto_ramfs_is_complete(tmp_path):
    source = _random_raw(tmp_path / "source.raw")
    with _ramfs(tmp_path / "ramfs") as folder:
        copy = folder / "copy.qcow2"

        qemu_img_convert(source, "RAW", copy, "QCOW2")

        assert _identical(source, copy)


@pytest.mark.parametrize("on_ramfs", [False, True])
def test_no_probe_file_is_left_beside_the_copy(tmp_path, on_ramfs):
    source = _random_raw(tmp_path / "source.raw")
    context = _ramfs(tmp_path / "ramfs") if on_ramfs else contextlib.nullcontext(tmp_path)
    with context as folder:
        qemu_img_convert(source, "RAW", folder / "copy.qcow2", "QCOW2")
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["copy.qcow2"] + ([] if on_ramfs else ["source.raw"])
        )
