"""Inspection of image files before any template copy becomes READY.

Images come from user URLs and uploads, so they are hostile until proven otherwise. A qcow2 can
name a backing file or an external data file (say /etc/shadow) and a VMDK can name extents
anywhere on the host; whoever later opens the image (qemu-img convert, a KVM host) would then
read those files into a guest disk. Inspection therefore runs in two steps:

1. `check_header`: our own parser reads the first bytes of the file, decides which format it
   really is, and refuses anything that refers to another file, before any qemu code runs.
2. `inspect_image`: then `qemu-img info -f <declared format>` under resource limits, and sanity
   checks of what qemu-img reports (same format, no backing file, no data file, a sane size).
"""

from __future__ import annotations

import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from .qemu import QEMU_FORMATS, QemuImgError, qemu_img_check, qemu_img_info, qemu_img_measure

DEFAULT_MAX_VIRTUAL_SIZE = 2 << 40  # 2 TiB, overridden by settings.STENCIL_MAX_VIRTUAL_SIZE

# How much of the file the magic checks look at: the ISO 9660 primary volume descriptor
# starts at 0x8000, and its "CD001" identifier at 0x8001.
_HEAD_SIZE = 0x8800
_ISO_MAGIC_OFFSET = 0x8001

# qcow2 (docs/interop/qcow2.txt in QEMU). All header fields are big-endian.
QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_V2_HEADER_LENGTH = 72
_QCOW2_V3_MIN_HEADER_LENGTH = 104
_QCOW2_MAX_BACKING_NAME = 1023  # qemu refuses longer names
_QCOW2_INCOMPAT_DIRTY = 1 << 0
_QCOW2_INCOMPAT_CORRUPT = 1 << 1
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_INCOMPAT_COMPRESSION = 1 << 3
_QCOW2_INCOMPAT_EXTL2 = 1 << 4
_QCOW2_INCOMPAT_KNOWN = (
    _QCOW2_INCOMPAT_DIRTY
    | _QCOW2_INCOMPAT_CORRUPT
    | _QCOW2_INCOMPAT_DATA_FILE
    | _QCOW2_INCOMPAT_COMPRESSION
    | _QCOW2_INCOMPAT_EXTL2
)
_QCOW2_EXT_END = 0x00000000
_QCOW2_OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55 of an L1 or L2 entry
_QCOW2_MAX_L1_BYTES = 32 << 20  # QCOW_MAX_L1_SIZE in qemu
_QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
_QCOW2_EXT_DATA_FILE = 0x44415441

# VMDK. The sparse extent header is little-endian; offsets and sizes are in 512-byte sectors.
VMDK4_MAGIC = b"KDMV"
VMDK3_MAGIC = b"COWD"
_SECTOR = 512
_VMDK_DESCRIPTOR_MARKER = b"# Disk DescriptorFile"
# qemu reads the descriptor of a sparse file at 0x200 (20 sectors) for parentFileNameHint and
# the CIDs, whatever the header's descriptor offset says, so we read the same bytes.
_VMDK_QEMU_DESC_OFFSET = 0x200
_VMDK_QEMU_DESC_SIZE = 20 * _SECTOR
_VMDK_MAX_DESCRIPTOR = 1 << 20
_VMDK_SELF_CONTAINED_TYPES = frozenset({"monolithicSparse", "streamOptimized"})
# An extent line as qemu's sscanf reads it: ACCESS SECTORS TYPE "FILE" [OFFSET].
_VMDK_EXTENT_LINE = re.compile(r'^\s*(\S+)\s+([+-]?\d+)\s+(\S+)\s+"([^"\r\n]*)"', re.MULTILINE)
_VMDK_CREATE_TYPE = re.compile(r'createType\s*=\s*"([^"\r\n]*)"')
_VMDK_PARENT_HINT = re.compile(r'parentFileNameHint\s*=\s*"?([^"\r\n]*)')

# VHD (a.k.a. qemu's "vpc"). The 512-byte footer is at the end, with a copy at offset 0 in
# dynamic disks. Big-endian.
VHD_COOKIE = b"conectix"
_VHD_FOOTER_SIZE = 512
_VHD_TYPE_FIXED = 2
_VHD_TYPE_DYNAMIC = 3
_VHD_TYPE_DIFFERENCING = 4

# Other formats qemu would recognise. We accept none of them, but a file that carries one of
# these headers must not pass as RAW: any tool that probes formats would read it as that format.
_FOREIGN_MAGICS: tuple[tuple[int, bytes, str], ...] = (
    (0, VMDK3_MAGIC, "VMDK3"),
    (0, b"QED\x00", "QED"),
    (0, b"vhdxfile", "VHDX"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (0, b"WithoutFreeSpace", "Parallels"),
    (0, b"WithouFreSpacExt", "Parallels"),
    (0, b"Bochs Virtual HD Image", "Bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop", "cloop"),
    (0x40, struct.pack("<I", 0xBEDA107F), "VDI"),
)

JSON_PROTOCOL = "json:"


class ImageRejected(Exception):
    """The image is not acceptable as a template; `reason` is a sentence for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = f"image rejected: {reason}"


@dataclass(frozen=True)
class ImageInfo:
    """What inspection learned: our format name and sizes in bytes. `required_size` is what
    qemu-img measure says writing the image out takes (None when not measured)."""

    format: str
    virtual_size: int
    actual_size: int | None
    required_size: int | None = None


def _shown(name: str | bytes, limit: int = 200) -> str:
    """A file name as it can go into a message: printable, and not too long."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in name)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


def _is_json_name(name: str | bytes) -> bool:
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return name.lstrip().startswith(JSON_PROTOCOL)


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _normalize_format(declared_format: str) -> str:
    declared = (declared_format or "").upper()
    if declared not in QEMU_FORMATS:
        raise ImageRejected(f"unknown image format {declared_format!r}")
    return declared


# --- format detection -------------------------------------------------------------------------


def _looks_like_vmdk_descriptor(head: bytes) -> bool:
    """Whether qemu would read head as a VMDK text descriptor (or it says it is one)."""
    if _VMDK_DESCRIPTOR_MARKER in head[:1024]:
        return True
    # qemu's vmdk_probe: skip comment and blank lines; the first other line is "version=N".
    for line in head[:2048].split(b"\n"):
        if line.startswith(b"#"):
            continue
        if not line.strip(b" \r"):
            continue
        return bool(re.fullmatch(rb"version=[123]\r?", line))
    return False


def _detect(head: bytes, tail: bytes) -> str | None:
    if head.startswith(QCOW2_MAGIC):
        return "QCOW2"
    if head.startswith(VMDK4_MAGIC):
        return "VMDK"
    if head.startswith(VHD_COOKIE):
        return "VHD"
    for offset, magic, name in _FOREIGN_MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return name
    if _looks_like_vmdk_descriptor(head):
        return "VMDK"
    if tail.startswith(VHD_COOKIE):
        return "VHD"
    if tail.startswith(b"koly"):
        return "DMG"
    if head[_ISO_MAGIC_OFFSET : _ISO_MAGIC_OFFSET + 5] == b"CD001":
        return "ISO"
    return None


def _head_and_tail(f: BinaryIO, size: int) -> tuple[bytes, bytes]:
    head = _read_at(f, 0, _HEAD_SIZE)
    tail = _read_at(f, size - _VHD_FOOTER_SIZE, _VHD_FOOTER_SIZE) if size >= 512 else b""
    return head, tail


def detect_format(path: Path) -> str | None:
    """Return the format path's magic bytes say it is, or None for no known header (raw).

    Returns one of our names (QCOW2, VMDK, VHD, ISO) or, for formats we never accept, another
    name (QED, VHDX, VDI, VMDK3, LUKS, …). Headers at offset 0 win over the VHD footer and the
    ISO volume descriptor, as they do when qemu probes a file.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head, tail = _head_and_tail(f, size)
    return _detect(head, tail)


# --- qcow2 ------------------------------------------------------------------------------------


def _check_qcow2(f: BinaryIO, size: int) -> None:
    header = _read_at(f, 0, _QCOW2_V3_MIN_HEADER_LENGTH)
    if len(header) < _QCOW2_V2_HEADER_LENGTH:
        raise ImageRejected("qcow2 header is truncated")
    (version,) = struct.unpack_from(">I", header, 4)
    if version not in (2, 3):
        raise ImageRejected(f"qcow2 version {version} is not supported (only 2 and 3)")
    backing_offset, backing_size, cluster_bits = struct.unpack_from(">QII", header, 8)
    (crypt_method,) = struct.unpack_from(">I", header, 32)
    if not 9 <= cluster_bits <= 21:
        raise ImageRejected(f"qcow2 cluster size 2^{cluster_bits} is invalid")
    cluster_size = 1 << cluster_bits
    _check_qcow2_l1(f, header, size, cluster_size)

    if version == 3:
        if len(header) < _QCOW2_V3_MIN_HEADER_LENGTH:
            raise ImageRejected("qcow2 header is truncated")
        (incompatible,) = struct.unpack_from(">Q", header, 72)
        (header_length,) = struct.unpack_from(">I", header, 100)
        if not _QCOW2_V3_MIN_HEADER_LENGTH <= header_length <= cluster_size:
            raise ImageRejected(f"qcow2 header length {header_length} is invalid")
    else:
        incompatible = 0
        header_length = _QCOW2_V2_HEADER_LENGTH

    backing_name = b""
    if backing_offset:
        length = min(backing_size, _QCOW2_MAX_BACKING_NAME)
        backing_name = _read_at(f, backing_offset, length) if backing_offset < size else b""

    # Header extensions run from the end of the header to the backing file name, or to the
    # end of the first cluster; qemu walks them the same way (qcow2_read_extensions).
    ext_end = backing_offset if backing_offset else cluster_size
    ext_end = min(ext_end, cluster_size)
    area = _read_at(f, 0, ext_end)
    data_file_name: bytes | None = None
    has_backing_format = False
    offset = header_length
    while offset + 8 <= len(area):
        ext_type, ext_len = struct.unpack_from(">II", area, offset)
        offset += 8
        if ext_type == _QCOW2_EXT_END:
            break
        if ext_len > ext_end - offset:
            raise ImageRejected("qcow2 header extension runs past the first cluster")
        if ext_type == _QCOW2_EXT_DATA_FILE:
            data_file_name = area[offset : offset + ext_len]
        elif ext_type == _QCOW2_EXT_BACKING_FORMAT:
            has_backing_format = True
        offset += (ext_len + 7) & ~7

    # json: first, so that the message says what the name really is.
    if backing_offset and _is_json_name(backing_name):
        raise ImageRejected(
            "qcow2 image has a backing file that uses the json: pseudo-protocol "
            f"({_shown(backing_name)}); templates must be self-contained"
        )
    if data_file_name is not None and _is_json_name(data_file_name):
        raise ImageRejected(
            "qcow2 image has an external data file that uses the json: pseudo-protocol "
            f"({_shown(data_file_name)}); templates must be self-contained"
        )
    if backing_offset:
        what = "backing file" + (" and backing format" if has_backing_format else "")
        raise ImageRejected(
            f"qcow2 image has a {what} ({_shown(backing_name)}); templates must be self-contained"
        )
    if incompatible & _QCOW2_INCOMPAT_CORRUPT:
        raise ImageRejected("qcow2 image is marked corrupt")
    if data_file_name is not None or incompatible & _QCOW2_INCOMPAT_DATA_FILE:
        shown = f" ({_shown(data_file_name)})" if data_file_name else ""
        raise ImageRejected(
            f"qcow2 image uses an external data file{shown}; templates must be self-contained"
        )
    unknown = incompatible & ~_QCOW2_INCOMPAT_KNOWN
    if unknown:
        raise ImageRejected(f"qcow2 image has unknown incompatible feature bits (0x{unknown:x})")
    if crypt_method != 0:
        # An encrypted template cannot boot without a secret the cloud does not have.
        raise ImageRejected("qcow2 image is encrypted; templates must not be encrypted")


def _check_qcow2_l1(f: BinaryIO, header: bytes, size: int, cluster_size: int) -> None:
    """Refuse an active L1 table that lies outside the file, points at L2 tables outside it, or
    points two entries at one L2 table. Such a table lets a small file claim terabytes of
    allocated data (every L1 entry on one L2 table whose entries all name one cluster), and
    `qemu-img check` would spend minutes and gigabytes of stderr walking it; this costs one
    read of the L1 table."""
    l1_size, l1_offset = struct.unpack_from(">IQ", header, 36)
    if l1_size == 0:
        return
    if l1_size * 8 > _QCOW2_MAX_L1_BYTES:
        raise ImageRejected(f"qcow2 L1 table of {l1_size} entries is larger than qemu allows")
    if l1_offset % cluster_size or l1_offset + l1_size * 8 > size:
        raise ImageRejected("qcow2 L1 table lies outside the file")
    entries = struct.unpack(f">{l1_size}Q", _read_at(f, l1_offset, l1_size * 8))
    seen: dict[int, int] = {}
    for entry in entries:
        l2_offset = entry & _QCOW2_OFFSET_MASK
        if not l2_offset:
            continue
        if l2_offset + cluster_size > size:
            raise ImageRejected(
                f"qcow2 L2 table at offset {l2_offset} lies past the end of the "
                f"{_human(size)} file: the metadata claims more data than the file can hold"
            )
        seen[l2_offset] = seen.get(l2_offset, 0) + 1
    shared = {offset: count for offset, count in seen.items() if count > 1}
    if shared:
        offset, count = max(shared.items(), key=lambda item: item[1])
        raise ImageRejected(
            f"qcow2 clusters are shared: {count} L1 entries point at the L2 table at offset "
            f"{offset}, so the metadata claims more allocated data than the file can hold"
        )


# --- VMDK -------------------------------------------------------------------------------------


def _text(raw: bytes) -> str:
    """Descriptor bytes as qemu sees them: a C string, so up to the first NUL."""
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _reject_vmdk_references(descriptor: str, *, kind: str) -> None:
    """Refuse json: names and parent links in a descriptor's text."""
    extents = _VMDK_EXTENT_LINE.findall(descriptor)
    for _access, _sectors, _type, name in extents:
        if _is_json_name(name):
            raise ImageRejected(
                f"VMDK {kind} has an extent that uses the json: pseudo-protocol "
                f"({_shown(name)}); templates must be self-contained"
            )
    # qemu takes any occurrence of the key (strstr), so we do too.
    if "parentFileNameHint" in descriptor:
        parent = _VMDK_PARENT_HINT.search(descriptor)
        name = parent.group(1) if parent else ""
        json_note = " that uses the json: pseudo-protocol" if _is_json_name(name) else ""
        raise ImageRejected(
            f"VMDK image has a parent disk{json_note} ({_shown(name)}); "
            "templates must be self-contained"
        )


def _check_vmdk(f: BinaryIO, size: int) -> None:
    head = _read_at(f, 0, 512)
    if not head.startswith(VMDK4_MAGIC):
        # A text descriptor holds no data: its extents are other files, and any file name
        # would do (/etc/passwd, a device, another tenant's image).
        descriptor = _text(_read_at(f, 0, min(size, _VMDK_MAX_DESCRIPTOR)))
        _reject_vmdk_references(descriptor, kind="descriptor")
        extents = _VMDK_EXTENT_LINE.findall(descriptor)
        named = f" ({extents[0][2]} extent {_shown(extents[0][3])})" if extents else ""
        raise ImageRejected(
            f"VMDK descriptor file points at other files{named}; "
            "upload a monolithicSparse or streamOptimized VMDK"
        )

    if len(head) < 77:
        raise ImageRejected("VMDK sparse header is truncated")
    (capacity,) = struct.unpack_from("<Q", head, 12)
    desc_offset, desc_size = struct.unpack_from("<QQ", head, 28)
    if capacity == 0:
        # With a zero capacity qemu opens the embedded descriptor as a descriptor file and
        # follows its extents, which can name any file.
        raise ImageRejected("VMDK sparse header has zero capacity; the image is not usable")
    if desc_offset == 0 or desc_size == 0:
        raise ImageRejected("VMDK sparse image has no embedded descriptor")
    if desc_size * _SECTOR > _VMDK_MAX_DESCRIPTOR or desc_offset * _SECTOR >= size:
        raise ImageRejected("VMDK embedded descriptor is out of bounds")

    descriptor = _text(_read_at(f, desc_offset * _SECTOR, desc_size * _SECTOR))
    qemu_view = _text(_read_at(f, _VMDK_QEMU_DESC_OFFSET, _VMDK_QEMU_DESC_SIZE))
    _reject_vmdk_references(descriptor, kind="descriptor")
    _reject_vmdk_references(qemu_view, kind="descriptor")

    create_type = _VMDK_CREATE_TYPE.search(descriptor)
    if create_type is None:
        raise ImageRejected("VMDK embedded descriptor has no createType")
    if create_type.group(1) not in _VMDK_SELF_CONTAINED_TYPES:
        raise ImageRejected(
            f"VMDK createType {_shown(create_type.group(1))!r} is not supported; "
            "use monolithicSparse or streamOptimized"
        )
    extents = _VMDK_EXTENT_LINE.findall(descriptor)
    if len(extents) != 1:
        raise ImageRejected(
            f"VMDK embedded descriptor lists {len(extents)} extents; a self-contained image "
            "has exactly one"
        )
    _access, _sectors, extent_type, extent_name = extents[0]
    if extent_type != "SPARSE":
        # FLAT, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE, ZERO: all name other files or
        # devices (or hold no data).
        raise ImageRejected(
            f"VMDK extent of type {_shown(extent_type)} ({_shown(extent_name)}) points "
            "outside the image; templates must be self-contained"
        )


# --- VHD --------------------------------------------------------------------------------------


def _check_vhd(head: bytes, tail: bytes) -> None:
    # qemu uses the copy at offset 0 when there is one, else the footer at the end: check both.
    footers = [copy[:_VHD_FOOTER_SIZE] for copy in (head, tail) if copy.startswith(VHD_COOKIE)]
    for footer in footers:
        if len(footer) < 64:
            raise ImageRejected("VHD footer is truncated")
        (disk_type,) = struct.unpack_from(">I", footer, 60)
        if disk_type == _VHD_TYPE_DIFFERENCING:
            raise ImageRejected(
                "VHD is a differencing disk that depends on a parent disk; "
                "templates must be self-contained"
            )
        if disk_type not in (_VHD_TYPE_FIXED, _VHD_TYPE_DYNAMIC):
            raise ImageRejected(f"VHD disk type {disk_type} is not supported")


# --- the checks -------------------------------------------------------------------------------


def check_header(path: Path, declared_format: str) -> None:
    """Check path's headers with our own parser, before anything runs qemu-img on it.

    Raises ImageRejected when the file is not a regular file, when its name or anything inside
    it uses the json: pseudo-protocol, when the detected format is not the declared one, or
    when the image refers to other files (backing file, external data file, VMDK extents or
    parent) or has features we cannot vouch for.
    """
    declared = _normalize_format(declared_format)
    path = Path(path)
    if any(part.startswith(JSON_PROTOCOL) for part in path.parts):
        raise ImageRejected(
            f"image path {_shown(str(path))} uses the json: pseudo-protocol; refusing to open it"
        )
    try:
        st = path.lstat()
    except OSError as exc:
        raise ImageRejected(f"image file cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        # A symlink or a device would make qemu-img read something other than the upload.
        raise ImageRejected("image is not a regular file")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head, tail = _head_and_tail(f, size)
        detected = _detect(head, tail)
        if detected != (None if declared == "RAW" else declared):
            if detected is None:
                raise ImageRejected(
                    f"the file was declared {declared} but has no {declared} header"
                )
            article = "an" if detected[0] in "AEIOU" else "a"
            raise ImageRejected(
                f"the file is {article} {detected} image, but it was declared {declared}"
            )
        if declared == "QCOW2":
            _check_qcow2(f, size)
        elif declared == "VMDK":
            _check_vmdk(f, size)
        elif declared == "VHD":
            _check_vhd(head, tail)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:g} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def check_consistency(path: Path, declared_format: str) -> None:
    """qcow2: `qemu-img check` (read-only, under limits) must find no corruption, no leak and
    no error. A refcount that disagrees with the references (a cluster shared by several L2
    entries, or one nothing uses) is how a crafted image claims more than the file holds."""
    declared = _normalize_format(declared_format)
    if declared != "QCOW2":
        return
    try:
        report = qemu_img_check(Path(path), declared)
    except QemuImgError as exc:
        raise ImageRejected(f"qemu-img check cannot finish on the image: {exc.message}") from None
    problems = []
    corruptions = int(report.get("corruptions") or 0)
    leaks = int(report.get("leaks") or 0)
    errors = int(report.get("check-errors") or 0)
    if corruptions:
        problems.append(
            f"{corruptions} corruption(s): refcounts that disagree with the references "
            "(clusters shared by several L2 entries, or references past the end of the file)"
        )
    if leaks:
        problems.append(f"{leaks} leaked cluster(s): refcounts on clusters nothing references")
    if errors:
        problems.append(f"{errors} check error(s): metadata qemu-img could not read")
    if problems:
        first = report.get("first-error") or ""
        detail = f" (first: {_shown(first)})" if first else ""
        raise ImageRejected("qemu-img check found " + "; ".join(problems) + detail)


def measure_format(output_format: str) -> str:
    """The qemu driver `qemu-img measure` is asked about: raw for raw output, else qcow2 (the
    only other driver that can measure; it counts the allocated data)."""
    return "raw" if output_format.lower() in ("raw", "iso") else "qcow2"


def check_required_size(
    path: Path,
    declared_format: str,
    *,
    room: int | None,
    room_name: str,
    output_format: str | None = None,
) -> int:
    """Return the bytes `qemu-img measure` says writing path out as output_format (default:
    its own format) takes; raise ImageRejected when that is more than `room` (None: no bound),
    naming `room_name`. Compressed clusters and the like make this far larger than the file."""
    declared = _normalize_format(declared_format)
    target = measure_format(output_format or declared)
    try:
        report = qemu_img_measure(Path(path), declared, target)
    except QemuImgError as exc:
        raise ImageRejected(f"qemu-img measure cannot size the image: {exc.message}") from None
    required = report.get("required")
    if not isinstance(required, int) or required < 0:
        raise ImageRejected("qemu-img measure gives no required size for the image")
    if room is not None and required > room:
        raise ImageRejected(
            f"writing the image needs {_human(required)} ({required} bytes, qemu-img measure), "
            f"more than the {max(room, 0)} bytes {room_name} leaves"
        )
    return required


def inspect_image(
    path: Path,
    declared_format: str,
    *,
    room: int | None = None,
    room_name: str = "the storage",
    output_format: str | None = None,
) -> ImageInfo:
    """Check path as an image of declared_format and return its sizes, or raise ImageRejected.

    Runs `check_header` first, then `qemu-img info -f <format>` under limits, then checks that
    qemu-img agrees: same format, no backing file, no data file, and a virtual size within
    settings.STENCIL_MAX_VIRTUAL_SIZE; then `check_consistency` (qemu-img check) and
    `check_required_size` (qemu-img measure within `room` bytes, named `room_name`).
    """
    declared = _normalize_format(declared_format)
    check_header(path, declared)
    try:
        info = qemu_img_info(Path(path), declared)
    except QemuImgError as exc:
        raise ImageRejected(f"qemu-img cannot read the image: {exc.message}") from None

    expected = QEMU_FORMATS[declared]
    if info.get("format") != expected:
        raise ImageRejected(
            f"qemu-img reads the image as {_shown(str(info.get('format')))}, not {expected}"
        )
    for key in ("backing-filename", "full-backing-filename"):
        if info.get(key):
            raise ImageRejected(
                f"image has a backing file ({_shown(str(info[key]))}); "
                "templates must be self-contained"
            )
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise ImageRejected(
            f"image uses an external data file ({_shown(str(specific['data-file']))}); "
            "templates must be self-contained"
        )
    if specific.get("corrupt"):
        raise ImageRejected("qemu-img reports the image as corrupt")
    for extent in specific.get("extents") or []:
        # A self-contained VMDK has its one extent in the file itself.
        if extent.get("filename") != info.get("filename"):
            raise ImageRejected(
                f"VMDK extent {_shown(str(extent.get('filename')))} is outside the image; "
                "templates must be self-contained"
            )

    virtual_size = info.get("virtual-size")
    if not isinstance(virtual_size, int) or virtual_size <= 0:
        raise ImageRejected("image has no usable virtual size")
    check_virtual_size(virtual_size)
    check_consistency(path, declared)
    required = check_required_size(
        path, declared, room=room, room_name=room_name, output_format=output_format
    )
    actual_size = info.get("actual-size")
    return ImageInfo(
        format=declared,
        virtual_size=virtual_size,
        actual_size=actual_size if isinstance(actual_size, int) else None,
        required_size=required,
    )


def max_virtual_size() -> int:
    """The largest virtual size a template may have (settings.STENCIL_MAX_VIRTUAL_SIZE)."""
    return int(getattr(settings, "STENCIL_MAX_VIRTUAL_SIZE", DEFAULT_MAX_VIRTUAL_SIZE))


def check_virtual_size(virtual_size: int) -> None:
    limit = max_virtual_size()
    if virtual_size > limit:
        raise ImageRejected(
            f"image virtual size {_human(virtual_size)} exceeds the limit of {_human(limit)} "
            "(STENCIL_MAX_VIRTUAL_SIZE)"
        )
