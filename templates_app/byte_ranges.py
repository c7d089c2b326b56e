"""HTTP Range requests (RFC 9110 section 14) over a file of known size: parse the header and
build the parts of a 206 answer. No Django here: the extract view uses it."""

from collections.abc import Iterator
from pathlib import Path

MAX_RANGES = 64  # more than this is answered with the whole file (no amplification)
CHUNK = 1 << 20

ByteRange = tuple[int, int]  # first and last byte, inclusive


def parse_range(header: str, size: int) -> list[ByteRange] | None:
    """The satisfiable ranges of `header` for a file of `size` bytes, in the order asked.

    None: no Range, not `bytes`, malformed or too many ranges; the whole file is sent (a
    server may ignore Range). []: well-formed but nothing satisfiable (416)."""
    unit, sep, spec = (header or "").partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts or len(parts) > MAX_RANGES:
        return None
    ranges: list[ByteRange] = []
    for part in parts:
        first, dash, last = part.partition("-")
        first, last = first.strip(), last.strip()
        if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
            return None
        if first == "":
            if last == "":
                return None
            suffix = int(last)
            if suffix > 0 and size > 0:
                ranges.append((max(size - suffix, 0), size - 1))
            continue
        start = int(first)
        if last and int(last) < start:
            return None
        end = int(last) if last else size - 1
        if start < size:
            ranges.append((start, min(end, size - 1)))
    return ranges


def read_range(path: Path, start: int, end: int, *, chunk: int = CHUNK) -> Iterator[bytes]:
    """The bytes start..end of `path`, streamed in chunks (never the whole range in memory)."""
    with path.open("rb") as handle:
        handle.seek(start)
        left = end - start + 1
        while left > 0:
            data = handle.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data


def multipart_parts(
    ranges: list[ByteRange], size: int, boundary: str, content_type: str
) -> list[tuple[bytes, ByteRange | None]]:
    """The pieces of a multipart/byteranges body: (header bytes, range to stream after it);
    the closing delimiter has no range."""
    pieces: list[tuple[bytes, ByteRange | None]] = []
    for start, end in ranges:
        head = (
            f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n"
        ).encode()
        pieces.append((head, (start, end)))
    pieces.append((f"\r\n--{boundary}--\r\n".encode(), None))
    return pieces


def multipart_length(pieces: list[tuple[bytes, ByteRange | None]]) -> int:
    return sum(len(head) + (r[1] - r[0] + 1 if r else 0) for head, r in pieces)


def stream_multipart(path: Path, pieces: list[tuple[bytes, ByteRange | None]]) -> Iterator[bytes]:
    for head, byte_range in pieces:
        yield head
        if byte_range is not None:
            yield from read_range(path, *byte_range)
