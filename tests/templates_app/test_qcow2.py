"""qcow2 overlays written in Python (templates_app.images.qcow2): qemu-img itself must find
them clean, read the backing file through them, and let a guest write to them."""

import json
import subprocess
from pathlib import Path

import pytest

from templates_app.images import qcow2

MiB = 1 << 20
GiB = 1 << 30


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def info(path: Path) -> dict:
    return json.loads(qemu_img("info", "-U", "-f", "qcow2", "--output=json", str(path)).stdout)


def check(path: Path) -> dict:
    result = qemu_img("check", "-f", "qcow2", "--output=json", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def base(tmp_path) -> Path:
    """A 64 MiB qcow2 with a pattern at 1 MiB (made by qemu-img, not the code under test)."""
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 1M 64k", str(path)], check=True
    )
    return path


@pytest.mark.parametrize("size", [64 * MiB, 64 * MiB + 1, 8 * GiB, 16 << 40])
def test_overlay_is_clean_and_names_its_backing_file_format_and_size(tmp_path, base, size):
    overlay = tmp_path / "vm.qcow2"
    qcow2.write_overlay(overlay, backing=str(base), backing_format="qcow2", size=size)

    report = check(overlay)
    # qemu-img's JSON report leaves out the counts that are zero.
    assert [report.get(k, 0) for k in ("corruptions", "leaks", "check-errors")] == [0, 0, 0]
    details = info(overlay)
    assert details["format"] == "qcow2"
    assert details["virtual-size"] == -(-size // 512) * 512
    assert details["backing-filename"] == str(base)
    assert details["backing-filename-format"] == "qcow2"
    assert details["format-specific"]["data"]["compat"] == "1.1"  # version 3


def test_overlay_reads_the_backing_file_and_takes_writes(tmp_path, base):
    overlay = tmp_path / "vm.qcow2"
    qcow2.write_overlay(overlay, backing=str(base), backing_format="qcow2", size=64 * MiB)

    same = qemu_img("compare", "-f", "qcow2", "-F", "qcow2", str(overlay), str(base))
    assert same.returncode == 0, same.stdout + same.stderr
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0xa5 8M 1M", str(overlay)], check=True
    )
    report = check(overlay)
    assert [report.get(k, 0) for k in ("corruptions", "leaks")] == [0, 0]
    assert report["allocated-clusters"] == 16  # the 1 MiB written, in the overlay
    read = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "read -q -P 0xa5 8M 1M", "-c", "read -q -P 0x5a 1M 64k"]
        + [str(overlay)],
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout
    assert base.stat().st_mtime_ns <= overlay.stat().st_mtime_ns, "the base was not written"


def test_overlay_on_a_raw_backing_file(tmp_path):
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\x42" * MiB)
    overlay = tmp_path / "vm.qcow2"
    qcow2.write_overlay(overlay, backing=str(raw), backing_format="raw", size=MiB)

    check(overlay)
    assert info(overlay)["backing-filename-format"] == "raw"
    same = qemu_img("compare", "-f", "qcow2", "-F", "raw", str(overlay), str(raw))
    assert same.returncode == 0, same.stdout + same.stderr


def test_the_same_bytes_as_qemu_img_create_apart_from_the_optional_feature_names(tmp_path, base):
    ours, theirs = tmp_path / "ours.qcow2", tmp_path / "theirs.qcow2"
    qcow2.write_overlay(ours, backing=str(base), backing_format="qcow2", size=GiB)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2"]
        + [str(theirs), str(GiB)],
        check=True,
    )
    # Clusters 1 and 2 (refcounts) and the L1 table are byte for byte what qemu-img writes.
    assert ours.read_bytes()[65536:] == theirs.read_bytes()[65536:]
    # The header fields after the backing name's offset too.
    assert ours.read_bytes()[16:112] == theirs.read_bytes()[16:112]


def test_an_existing_file_is_replaced(tmp_path, base):
    overlay = tmp_path / "vm.qcow2"
    overlay.write_bytes(b"left by libvirt" * 100_000)
    qcow2.write_overlay(overlay, backing=str(base), backing_format="qcow2", size=64 * MiB)
    check(overlay)
    assert overlay.stat().st_size < 256 * 1024


@pytest.mark.parametrize(
    "backing, backing_format, size",
    [
        ("/pool/base.vmdk", "vmdk", GiB),  # a format qcow2 overlays here do not name
        ("relative/base.qcow2", "qcow2", GiB),
        ("/" + "x" * 1100, "qcow2", GiB),  # longer than qemu's 1023
        ("/pool/base.qcow2", "qcow2", 0),
    ],
)
def test_what_the_writer_leaves_to_qemu_img(backing, backing_format, size):
    assert not qcow2.supported(backing=backing, backing_format=backing_format, size=size)


def test_a_backing_qcow2_with_an_absolute_name_is_supported():
    assert qcow2.supported(backing="/pool/base.qcow2", backing_format="qcow2", size=GiB)


@pytest.mark.parametrize("content", [b"not an image" * 100, b"", None])
def test_a_backing_file_that_is_missing_or_not_qcow2_is_refused_before_writing(tmp_path, content):
    backing = tmp_path / "base.qcow2"
    if content is not None:
        backing.write_bytes(content)
    overlay = tmp_path / "vm.qcow2"
    with pytest.raises(qcow2.BackingFileRejected):
        qcow2.write_overlay(overlay, backing=str(backing), backing_format="qcow2", size=GiB)
    assert not overlay.exists()
