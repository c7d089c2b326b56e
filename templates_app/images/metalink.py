"""Metalink (RFC 5854 and the older 3.0 format): mirrors and hashes, parsed without DTDs or
entities (defusedxml), each mirror checked by the outbound URL rules."""

import logging
from dataclasses import dataclass

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from .checksums import normalize_checksum
from .urlsafety import UnsafeUrl, validate_url

logger = logging.getLogger(__name__)

_METALINK_HASHES = {"sha-256": "SHA-256", "sha-512": "SHA-512", "sha-1": "SHA-1", "md5": "MD5"}


class MetalinkRefused(Exception):
    """The metalink cannot be used; `message` says why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class Mirror:
    url: str
    priority: int


def parse_metalink(data: bytes) -> tuple[list[Mirror], str]:
    """Mirrors (validated, .torrent skipped) in priority order, and the best hash it gives."""
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, SafeET.ParseError) as exc:
        raise MetalinkRefused(f"metalink refused: {type(exc).__name__}: {exc}") from exc
    mirrors, checksum = [], ""
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "url" and element.text:
            url = element.text.strip()
            if url.lower().endswith(".torrent"):
                continue
            try:
                validate_url(url)
            except UnsafeUrl as exc:
                logger.info("metalink mirror refused: %s", exc.message)
                continue
            mirrors.append(Mirror(url=url, priority=int(element.get("priority", "999999"))))
        elif tag == "hash" and element.text and not checksum:
            algorithm = _METALINK_HASHES.get((element.get("type") or "").lower())
            if algorithm:
                checksum = normalize_checksum(f"{{{algorithm}}}{element.text.strip()}")
    mirrors.sort(key=lambda mirror: mirror.priority)
    if not mirrors:
        raise MetalinkRefused("metalink lists no usable mirror (http/https, allowed address)")
    return mirrors, checksum


def scheme_of(url: str) -> str:
    """The registry key: 'metalink' for .metalink/.meta4 URLs, else the URL scheme."""
    path = url.split("?", 1)[0].lower()
    if path.endswith((".metalink", ".meta4")):
        return "metalink"
    return url.split(":", 1)[0].lower()
