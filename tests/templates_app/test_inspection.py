"""Image inspection and the qemu-img wrapper, against real images built with qemu-img and by hand.

The hostile images are the ones that matter: each refers to another file (a backing file, an
external data file, a VMDK extent or parent) or lies about its format. Most of them must be
refused by our own header check, before qemu-img ever opens them: the `no_qemu` fixture makes
any qemu-img call from inspection fail the test.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from templates_app.images import inspection
from templates_app.images.inspection import (
    ImageInfo,
    ImageRejected,
    check_header,
    detect_format,
    inspect_image,
)
from templates_app.images.qemu import (
    QEMU_FORMATS,
    QemuImgError,
    qemu_img_convert,
    qemu_img_create_overlay,
    qemu_img_info,
    run_qemu_img,
)

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is missing")

MiB = 1 << 20


def qemu_img(cwd: Path, *args: str) -> None:
    """Build a fixture image with qemu-img directly (not through the code under test)."""
    subprocess.run(["qemu-img", *args], cwd=cwd, check=True, capture_output=True)


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def rejected(path: Path, declared: str) -> str:
    with pytest.raises(ImageRejected) as excinfo:
        inspect_image(path, declared)
    return excinfo.value.reason


@pytest.fixture
def no_qemu(monkeypatch):
    """Fail the test if inspection gets as far as running qemu-img."""

    def refuse(*args, **kwargs):
        raise AssertionError("qemu-img ran on an image the header check should have refused")

    monkeypatch.setattr(inspection, "qemu_img_info", refuse)


@pytest.fixture
def qcow2(tmp_path) -> Path:
    qemu_img(tmp_path, "create", "-q", "-f", "qcow2", "a.qcow2", "64M")
    return tmp_path / "a.qcow2"


@pytest.fixture
def raw(tmp_path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\xeb\x63\x90" + b"\x00" * (MiB - 3))  # starts like an MBR boot sector
    return path


@pytest.fixture
def vmdk(tmp_path) -> Path:
    qemu_img(tmp_path, "create", "-q", "-f", "vmdk", "x.vmdk", "64M")
    return tmp_path / "x.vmdk"


def make_iso(path: Path) -> Path:
    """A minimal ISO 9660 image: 32 KiB of system area, then a primary volume descriptor."""
    path.write_bytes(b"\x00" * 0x8000 + b"\x01CD001\x01" + b"\x00" * (2048 - 7))
    return path


# --- qcow2 ------------------------------------------------------------------------------------


def test_clean_qcow2_is_accepted(qcow2):
    info = inspect_image(qcow2, "QCOW2")
    assert info.format == "QCOW2"
    assert info.virtual_size == 64 * MiB
    assert isinstance(info.actual_size, int) and info.actual_size > 0
    assert isinstance(info, ImageInfo)


def test_qcow2_dirty_bit_is_accepted(qcow2):
    patch(qcow2, 72, struct.pack(">Q", 1))  # incompatible bit 0: dirty refcounts, harmless
    assert inspect_image(qcow2, "QCOW2").virtual_size == 64 * MiB


def test_qcow2_with_backing_file_is_rejected(tmp_path, no_qemu):
    qemu_img(tmp_path, "create", "-q", "-f", "qcow2", "base.qcow2", "64M")
    qemu_img(tmp_path, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "c.qcow2")
    reason = rejected(tmp_path / "c.qcow2", "QCOW2")
    assert "backing file" in reason
    assert "base.qcow2" in reason
    assert "self-contained" in reason


def test_qcow2_with_json_backing_name_is_rejected(qcow2, no_qemu):
    name = b'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/shadow"}}'
    # The name goes inside the first cluster, after the header extensions, as qemu writes it.
    patch(qcow2, 0x8000, name)
    patch(qcow2, 8, struct.pack(">QI", 0x8000, len(name)))
    reason = rejected(qcow2, "QCOW2")
    assert "json:" in reason
    assert "backing file" in reason


def test_qcow2_with_external_data_file_is_rejected(tmp_path, no_qemu):
    qemu_img(tmp_path, "create", "-q", "-f", "qcow2", "-o", "data_file=data.raw", "x.qcow2", "64M")
    reason = rejected(tmp_path / "x.qcow2", "QCOW2")
    assert "external data file" in reason
    assert "data.raw" in reason


def test_qcow2_data_file_bit_without_extension_is_rejected(qcow2, no_qemu):
    patch(qcow2, 72, struct.pack(">Q", 1 << 2))
    assert "external data file" in rejected(qcow2, "QCOW2")


def test_qcow2_with_unknown_incompatible_feature_is_rejected(qcow2, no_qemu):
    patch(qcow2, 72, struct.pack(">Q", 1 << 20))
    assert "unknown incompatible feature bits (0x100000)" in rejected(qcow2, "QCOW2")


def test_qcow2_marked_corrupt_is_rejected(qcow2, no_qemu):
    patch(qcow2, 72, struct.pack(">Q", 1 << 1))
    assert "corrupt" in rejected(qcow2, "QCOW2")


def test_qcow2_version_1_is_rejected(qcow2, no_qemu):
    patch(qcow2, 4, struct.pack(">I", 1))  # the old qcow format, which has backing files too
    assert "version 1" in rejected(qcow2, "QCOW2")


def test_qcow2_declared_raw_or_iso_is_rejected(qcow2, no_qemu):
    assert rejected(qcow2, "RAW") == "the file is a QCOW2 image, but it was declared RAW"
    assert rejected(qcow2, "ISO") == "the file is a QCOW2 image, but it was declared ISO"


def test_qcow2_that_qemu_img_refuses_is_rejected_with_its_message(qcow2):
    patch(qcow2, 56, struct.pack(">I", 0x7FFFFFFF))  # refcount_table_clusters
    reason = rejected(qcow2, "QCOW2")
    assert reason.startswith("qemu-img cannot read the image:")
    assert "Reference count table too large" in reason


def test_qcow2_l1_table_larger_than_qemu_allows_is_rejected_before_qemu(qcow2, no_qemu):
    patch(qcow2, 36, struct.pack(">I", 0x7FFFFFFF))  # l1_size
    assert "L1 table of 2147483647 entries is larger than qemu allows" in rejected(qcow2, "QCOW2")


def test_virtual_size_limit_comes_from_settings(qcow2, settings):
    settings.STENCIL_MAX_VIRTUAL_SIZE = 32 * MiB
    assert rejected(qcow2, "QCOW2") == (
        "image virtual size 64 MiB exceeds the limit of 32 MiB (STENCIL_MAX_VIRTUAL_SIZE)"
    )


# --- raw --------------------------------------------------------------------------------------


def test_raw_is_accepted_as_raw(raw):
    info = inspect_image(raw, "RAW")
    assert info == ImageInfo(
        format="RAW", virtual_size=MiB, actual_size=info.actual_size, required_size=MiB
    )


def test_raw_declared_qcow2_is_rejected(raw, no_qemu):
    assert rejected(raw, "QCOW2") == "the file was declared QCOW2 but has no QCOW2 header"


def test_empty_raw_is_rejected(tmp_path):
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    assert rejected(empty, "RAW") == "image has no usable virtual size"


def test_other_qemu_format_declared_raw_is_rejected(tmp_path, no_qemu):
    qemu_img(tmp_path, "create", "-q", "-f", "qed", "x.qed", "64M")
    assert rejected(tmp_path / "x.qed", "RAW") == "the file is a QED image, but it was declared RAW"


# --- VMDK -------------------------------------------------------------------------------------


def test_vmdk_monolithic_sparse_is_accepted(vmdk):
    info = inspect_image(vmdk, "VMDK")
    assert (info.format, info.virtual_size) == ("VMDK", 64 * MiB)


def test_vmdk_stream_optimized_is_accepted(tmp_path):
    qemu_img(
        tmp_path, "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", "s.vmdk", "1M"
    )
    assert inspect_image(tmp_path / "s.vmdk", "VMDK").virtual_size == MiB


def test_vmdk_with_flat_extent_is_rejected(tmp_path, no_qemu):
    qemu_img(
        tmp_path, "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "x.vmdk", "64M"
    )
    assert (tmp_path / "x-flat.vmdk").exists()
    reason = rejected(tmp_path / "x.vmdk", "VMDK")
    assert "descriptor file points at other files" in reason
    assert "x-flat.vmdk" in reason
    # The flat extent alone is raw data, not a VMDK.
    assert "no VMDK header" in rejected(tmp_path / "x-flat.vmdk", "VMDK")


def test_hand_written_descriptor_pointing_at_etc_passwd_is_rejected(tmp_path, no_qemu):
    path = tmp_path / "evil.vmdk"
    path.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\nRW 8 FLAT "/etc/passwd" 0\n'
    )
    reason = rejected(path, "VMDK")
    assert "/etc/passwd" in reason
    assert "points at other files" in reason
    # Without the comment line qemu still reads it as a descriptor, so it cannot pass as RAW.
    path.write_text('version=1\ncreateType="monolithicFlat"\nRW 8 FLAT "/etc/passwd" 0\n')
    assert rejected(path, "RAW") == "the file is a VMDK image, but it was declared RAW"


def test_vmdk_descriptor_with_json_extent_is_rejected(tmp_path, no_qemu):
    path = tmp_path / "evil.vmdk"
    path.write_text(
        '# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n'
        'RW 8 FLAT "json:{\\"driver\\":\\"file\\"}" 0\n'
    )
    assert "json:" in rejected(path, "VMDK")


def _replace_embedded_descriptor(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    start = 0x200
    text = data[start : start + 20 * 512].split(b"\x00", 1)[0]
    assert old in text
    patched = text.replace(old, new)
    patch(path, start, patched + b"\x00" * max(0, len(text) - len(patched)))


def test_sparse_vmdk_with_zero_capacity_is_rejected(vmdk, no_qemu):
    # With capacity 0, qemu opens the embedded descriptor as a descriptor file and would read
    # /etc/passwd as a FLAT extent (checked by hand with qemu-img info: it lists the extent).
    _replace_embedded_descriptor(vmdk, b'RW 131072 SPARSE "x.vmdk"', b'RW 8 FLAT "/etc/passwd" 0')
    _replace_embedded_descriptor(vmdk, b"monolithicSparse", b"monolithicFlat")
    patch(vmdk, 12, struct.pack("<Q", 0))
    assert "zero capacity" in rejected(vmdk, "VMDK")


def test_sparse_vmdk_with_parent_hint_is_rejected(vmdk, no_qemu):
    _replace_embedded_descriptor(
        vmdk, b"parentCID=ffffffff\n", b'parentCID=ffffffff\nparentFileNameHint="/etc/passwd"\n'
    )
    reason = rejected(vmdk, "VMDK")
    assert "parent disk" in reason
    assert "/etc/passwd" in reason


def test_sparse_vmdk_with_flat_extent_in_embedded_descriptor_is_rejected(vmdk, no_qemu):
    _replace_embedded_descriptor(vmdk, b'SPARSE "x.vmdk"', b'FLAT "/etc/passwd" 0')
    reason = rejected(vmdk, "VMDK")
    assert "type FLAT" in reason
    assert "/etc/passwd" in reason


def test_sparse_vmdk_with_other_create_type_is_rejected(vmdk, no_qemu):
    _replace_embedded_descriptor(vmdk, b"monolithicSparse", b"vmfsSparse")
    assert "createType 'vmfsSparse' is not supported" in rejected(vmdk, "VMDK")


def test_vmdk_declared_raw_is_rejected(vmdk, no_qemu):
    assert rejected(vmdk, "RAW") == "the file is a VMDK image, but it was declared RAW"


# --- VHD --------------------------------------------------------------------------------------


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_vhd_is_accepted_as_vhd(tmp_path, subformat):
    qemu_img(tmp_path, "create", "-q", "-f", "vpc", "-o", f"subformat={subformat}", "x.vhd", "8M")
    info = inspect_image(tmp_path / "x.vhd", "VHD")
    # VHD sizes follow the CHS geometry, so qemu rounds 8 MiB up a little.
    assert info.format == "VHD"
    assert 8 * MiB <= info.virtual_size < 9 * MiB


def _set_vhd_disk_type(footer: bytes, disk_type: int) -> bytes:
    patched = bytearray(footer)
    struct.pack_into(">II", patched, 60, disk_type, 0)
    checksum = ~sum(patched) & 0xFFFFFFFF  # one's complement of the byte sum, field zeroed
    struct.pack_into(">I", patched, 64, checksum)
    return bytes(patched)


def test_differencing_vhd_is_rejected(tmp_path, no_qemu):
    qemu_img(tmp_path, "create", "-q", "-f", "vpc", "x.vhd", "8M")
    path = tmp_path / "x.vhd"
    data = path.read_bytes()
    patch(path, 0, _set_vhd_disk_type(data[:512], 4))
    patch(path, len(data) - 512, _set_vhd_disk_type(data[-512:], 4))
    assert "differencing disk" in rejected(path, "VHD")


def test_vhd_declared_raw_is_rejected(tmp_path, no_qemu):
    qemu_img(tmp_path, "create", "-q", "-f", "vpc", "-o", "subformat=fixed", "x.vhd", "1M")
    # qemu itself probes a fixed VHD as raw (it only looks at offset 0); our check does not.
    assert rejected(tmp_path / "x.vhd", "RAW") == "the file is a VHD image, but it was declared RAW"


# --- ISO --------------------------------------------------------------------------------------


def test_iso_is_accepted_as_iso(tmp_path):
    path = make_iso(tmp_path / "boot.iso")
    info = inspect_image(path, "ISO")
    assert (info.format, info.virtual_size) == ("ISO", path.stat().st_size)


def test_file_without_cd001_declared_iso_is_rejected(raw, no_qemu):
    assert rejected(raw, "ISO") == "the file was declared ISO but has no ISO header"


def test_iso_declared_raw_is_rejected(tmp_path, no_qemu):
    path = make_iso(tmp_path / "boot.iso")
    assert rejected(path, "RAW") == "the file is an ISO image, but it was declared RAW"


# --- file names and detection -----------------------------------------------------------------


def test_json_file_name_is_rejected(tmp_path, no_qemu):
    path = tmp_path / 'json:{"driver":"file","filename":"x"}'
    path.write_bytes(b"\x00" * 1024)
    assert "json: pseudo-protocol" in rejected(path, "RAW")


def test_symlink_and_missing_file_are_rejected(raw, tmp_path, no_qemu):
    link = tmp_path / "link.raw"
    link.symlink_to(raw)
    assert rejected(link, "RAW") == "image is not a regular file"
    assert "cannot be read" in rejected(tmp_path / "missing.raw", "RAW")


def test_unknown_declared_format_is_rejected(raw, no_qemu):
    assert rejected(raw, "VHDX") == "unknown image format 'VHDX'"


def test_detect_format(tmp_path, qcow2, vmdk, raw):
    qemu_img(tmp_path, "create", "-q", "-f", "vpc", "d.vhd", "1M")
    qemu_img(tmp_path, "create", "-q", "-f", "vpc", "-o", "subformat=fixed", "f.vhd", "1M")
    qemu_img(tmp_path, "create", "-q", "-f", "vdi", "x.vdi", "1M")
    assert detect_format(qcow2) == "QCOW2"
    assert detect_format(vmdk) == "VMDK"
    assert detect_format(tmp_path / "d.vhd") == "VHD"
    assert detect_format(tmp_path / "f.vhd") == "VHD"
    assert detect_format(tmp_path / "x.vdi") == "VDI"
    assert detect_format(make_iso(tmp_path / "x.iso")) == "ISO"
    assert detect_format(raw) is None


def test_check_header_accepts_clean_images(qcow2, vmdk, raw):
    check_header(qcow2, "QCOW2")
    check_header(vmdk, "vmdk")  # our names are case-insensitive here
    check_header(raw, "RAW")


# --- qemu.py ----------------------------------------------------------------------------------


def test_qemu_formats():
    assert QEMU_FORMATS == {
        "QCOW2": "qcow2",
        "RAW": "raw",
        "VHD": "vpc",
        "VMDK": "vmdk",
        "ISO": "raw",
    }


def test_run_qemu_img_refuses_json_names(tmp_path):
    spec = 'json:{"driver":"file","filename":"/etc/passwd"}'
    with pytest.raises(QemuImgError, match="json:") as excinfo:
        run_qemu_img(["info", "-f", "raw", spec])
    assert excinfo.value.returncode is None
    with pytest.raises(QemuImgError, match="json:"):
        run_qemu_img(["create", "-f", "qcow2", "-o", f"backing_file={spec}", tmp_path / "x", "1M"])


def test_run_qemu_img_error_carries_stderr_and_status(raw):
    with pytest.raises(QemuImgError) as excinfo:
        run_qemu_img(["info", "-f", "qcow2", str(raw)])
    assert excinfo.value.returncode == 1
    assert "Image is not in qcow2 format" in excinfo.value.message
    assert not excinfo.value.message.startswith("qemu-img:")


def test_run_qemu_img_address_space_limit_applies(qcow2):
    # qemu-img cannot even start its threads in 16 MiB; the same call passes with the default.
    with pytest.raises(QemuImgError) as excinfo:
        run_qemu_img(["info", "-f", "qcow2", str(qcow2)], address_space=16 * MiB)
    assert excinfo.value.returncode is not None and excinfo.value.returncode != 0
    run_qemu_img(["info", "-f", "qcow2", str(qcow2)])


def test_run_qemu_img_cpu_limit_applies():
    # `bench` on qemu's null driver only burns CPU; one CPU second ends it with SIGKILL.
    args = ["bench", "-c", "1000000000", "-d", "1", "-s", "512"]
    with pytest.raises(QemuImgError, match="killed by SIGKILL") as excinfo:
        run_qemu_img([*args, "--image-opts", "driver=null-co,size=1M"], cpu_seconds=1)
    assert excinfo.value.returncode == -9


def test_run_qemu_img_timeout():
    # A benchmark that would run for minutes: only the timeout can end it within the test.
    args = ["bench", "-c", "1000000000", "-d", "1", "-s", "512"]
    with pytest.raises(QemuImgError, match="timed out") as excinfo:
        run_qemu_img([*args, "--image-opts", "driver=null-co,size=1M"], timeout=0.5, cpu_seconds=60)
    assert excinfo.value.returncode is None


def test_qemu_img_info_names_the_format(qcow2):
    info = qemu_img_info(qcow2, "QCOW2")
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 * MiB)
    # -f raw reads a qcow2 file as plain bytes: qemu-img never guesses from the contents.
    assert qemu_img_info(qcow2, "RAW")["format"] == "raw"


def test_create_overlay_records_backing_file_and_format(tmp_path, qcow2):
    overlay = tmp_path / "vm-1.qcow2"
    qemu_img_create_overlay(overlay, qcow2, "QCOW2")
    info = json.loads(run_qemu_img(["info", "-f", "qcow2", "--output=json", str(overlay)]).stdout)
    assert info["backing-filename"] == str(qcow2.absolute())
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 64 * MiB
    # An overlay is never acceptable as a template.
    assert "backing file" in rejected(overlay, "QCOW2")


def test_convert_qcow2_to_raw(tmp_path, qcow2):
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(qcow2)],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "out.raw"
    qemu_img_convert(qcow2, "QCOW2", out, "RAW")
    assert out.stat().st_size == 64 * MiB
    compare = run_qemu_img(["compare", "-f", "qcow2", "-F", "raw", str(qcow2), str(out)])
    assert "Images are identical" in compare.stdout
    with open(out, "rb") as f:
        f.seek(MiB)
        assert f.read(64 * 1024) == b"\x5a" * 64 * 1024
    assert inspect_image(out, "RAW").virtual_size == 64 * MiB


def test_qemu_img_output_is_kept_bounded(tmp_path):
    """`qemu-img check` of an image with half a million bad clusters prints a line for each:
    the runner keeps 64 KiB of it, not tens of megabytes."""
    from templates_app.images.qemu import run_qemu_img
    from tests import image_bombs

    bomb = image_bombs.claims_past_end(tmp_path / "past-end.qcow2")
    result = run_qemu_img(
        ["check", "-f", "qcow2", "--output=json", bomb], ok_returncodes=frozenset({2})
    )
    assert result.stderr.count("ERROR") > 100
    assert len(result.stderr.encode()) <= 64 << 10
    assert '"corruptions": 524286' in result.stdout
