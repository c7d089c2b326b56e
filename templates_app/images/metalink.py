"""Metalink (RFC 5854 and the older 3.0 format): mirrors and hashes, parsed without DTDs or
entities (defusedxml), each mirror checked by the outbound URL rules.

A metalink is refused as a whole (MetalinkRefused, a 400 naming `url` at registration) when it
is not well-formed, describes more than one file, gives a priority that is not an integer from
1 to 999999, gives a hash of a known type whose text is not a digest of that type, or lists no
mirror the URL rules allow. Piece hashes (`<pieces>`) are not file hashes and are ignored.
"""

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from ..errors import InvalidInput
from .checksums import normalize_checksum
from .downloader import DownloadError, download_to_file
from .urlsafety import UnsafeUrl, validate_url

logger = logging.getLogger(__name__)

# Metalink hash types (RFC 5854 uses IANA names, 3.0 the short ones), strongest first.
_METALINK_HASHES = {
    "sha-512": "SHA-512",
    "sha512": "SHA-512",
    "sha-384": "SHA-384",
    "sha384": "SHA-384",
    "sha-256": "SHA-256",
    "sha256": "SHA-256",
    "sha-1": "SHA-1",
    "sha1": "SHA-1",
    "md5": "MD5",
}
_STRENGTH = ["SHA-512", "SHA-384", "SHA-256", "SHA-1", "MD5"]
MIN_PRIORITY, MAX_PRIORITY = 1, 999999  # RFC 5854 section 4.2.8.3
DEFAULT_PRIORITY = MAX_PRIORITY
METALINK_MAX_BYTES = 1 << 20


class MetalinkRefused(InvalidInput):
    """The metalink cannot be used; `message` says why (a 400 naming `url`)."""

    def __init__(self, message: str):
        super().__init__(message, field="url")


@dataclass
class Mirror:
    url: str
    priority: int


def _tag(element) -> str:
    return element.tag.rsplit("}", 1)[-1] if isinstance(element.tag, str) else ""


def _priority(element) -> int:
    text = element.get("priority")
    if text is None:
        return DEFAULT_PRIORITY
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise MetalinkRefused(
            f"metalink refused: mirror priority {text[:40]!r} is not an integer from "
            f"{MIN_PRIORITY} to {MAX_PRIORITY}"
        )
    return value


def _file_hash(element) -> str:
    """`{ALGO}hex` of a <hash> of a known type, '' for an unknown type; refused if malformed."""
    kind = (element.get("type") or "").strip().lower()
    algorithm = _METALINK_HASHES.get(kind)
    if algorithm is None:
        return ""
    text = (element.text or "").strip()
    try:
        return normalize_checksum(f"{{{algorithm}}}{text}")
    except InvalidInput as exc:
        raise MetalinkRefused(
            f"metalink refused: {kind} hash {text[:80]!r}: {exc.message}"
        ) from None


def parse_metalink(data: bytes) -> tuple[list[Mirror], str]:
    """Mirrors (validated, .torrent skipped) in priority order, and the strongest file hash."""
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, SafeET.ParseError) as exc:
        raise MetalinkRefused(f"metalink refused: {type(exc).__name__}: {exc}") from exc
    if _tag(root) != "metalink":
        raise MetalinkRefused("metalink refused: the document is not a <metalink>")
    files = [element for element in root.iter() if _tag(element) == "file"]
    if len(files) != 1:
        raise MetalinkRefused(
            f"metalink refused: it describes {len(files)} files; a template needs exactly one"
        )
    piece_hashes = {
        id(child) for element in files[0].iter() if _tag(element) == "pieces" for child in element
    }
    mirrors, hashes = [], {}
    for element in files[0].iter():
        tag = _tag(element)
        if tag == "url" and element.text:
            url = element.text.strip()
            if url.lower().endswith(".torrent"):
                continue
            priority = _priority(element)
            try:
                validate_url(url)
            except UnsafeUrl as exc:
                logger.info("metalink mirror refused: %s", exc.message)
                continue
            mirrors.append(Mirror(url=url, priority=priority))
        elif tag == "hash" and id(element) not in piece_hashes:
            checksum = _file_hash(element)
            if checksum:
                hashes.setdefault(checksum[1 : checksum.index("}")], checksum)
    mirrors.sort(key=lambda mirror: mirror.priority)
    if not mirrors:
        raise MetalinkRefused("metalink lists no usable mirror (http/https, allowed address)")
    best = next((hashes[algo] for algo in _STRENGTH if algo in hashes), "")
    return mirrors, best


def fetch_metalink(
    url: str,
    *,
    scratch_dir: Path,
    headers: dict[str, str] | None = None,
    ca_dir: str | None = None,
    backoff_base: float = 0.5,
) -> tuple[list[Mirror], str]:
    """Download the metalink at url (at most 1 MiB, the URL rules applied to it and to every
    redirect) into a scratch file, parse it, delete the file. Any failure is MetalinkRefused."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    listing = scratch_dir / f".metalink-{uuid.uuid4().hex}"
    try:
        download_to_file(
            url,
            listing,
            headers=headers or {},
            ca_dir=ca_dir,
            max_bytes=METALINK_MAX_BYTES,
            max_attempts=2,
            backoff_base=backoff_base,
        )
        return parse_metalink(listing.read_bytes())
    except MetalinkRefused:
        raise
    except (DownloadError, UnsafeUrl) as exc:
        message = getattr(exc, "message", str(exc))
        raise MetalinkRefused(f"metalink cannot be fetched: {message}") from exc
    finally:
        listing.unlink(missing_ok=True)


def scheme_of(url: str) -> str:
    """The registry key: 'metalink' for .metalink/.meta4 URLs, else the URL scheme."""
    path = url.split("?", 1)[0].lower()
    if path.endswith((".metalink", ".meta4")):
        return "metalink"
    return url.split(":", 1)[0].lower()
