"""Checksums in CloudStack's `{ALGO}hex` form, validated for algorithm and length."""

import re

from ..errors import InvalidInput

ALGORITHM_HEX_LENGTHS = {
    "MD5": 32,
    "SHA-1": 40,
    "SHA-224": 56,
    "SHA-256": 64,
    "SHA-384": 96,
    "SHA-512": 128,
}
HASHLIB_NAMES = {
    "MD5": "md5",
    "SHA-1": "sha1",
    "SHA-224": "sha224",
    "SHA-256": "sha256",
    "SHA-384": "sha384",
    "SHA-512": "sha512",
}
_ALGORITHM_BY_LENGTH = {length: algo for algo, length in ALGORITHM_HEX_LENGTHS.items()}
_PREFIXED = re.compile(r"^\{(?P<algo>[A-Za-z0-9-]+)\}(?P<hex>.*)$", re.DOTALL)
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _canonical_algorithm(name: str) -> str | None:
    upper = name.upper()
    if upper in ALGORITHM_HEX_LENGTHS:
        return upper
    # Accept SHA256 for SHA-256, as people write it both ways.
    dashed = re.sub(r"^SHA(\d+)$", r"SHA-\1", upper)
    return dashed if dashed in ALGORITHM_HEX_LENGTHS else None


def normalize_checksum(value: str, *, field: str = "checksum") -> str:
    """Return `{ALGO}lowerhex`, or '' for an empty value; raise InvalidInput naming the rule."""
    value = (value or "").strip()
    if not value:
        return ""
    match = _PREFIXED.match(value)
    if match:
        algorithm = _canonical_algorithm(match["algo"])
        if algorithm is None:
            allowed = ", ".join(ALGORITHM_HEX_LENGTHS)
            raise InvalidInput(
                f"unknown checksum algorithm '{match['algo']}'; use one of {allowed}", field=field
            )
        hex_digest = match["hex"]
    else:
        hex_digest = value
        algorithm = _ALGORITHM_BY_LENGTH.get(len(value))
        if algorithm is None or not _HEX.match(value):
            raise InvalidInput(
                "checksum must be {ALGO}hex or a bare hex digest whose length names one "
                "algorithm (32 MD5, 40 SHA-1, 56 SHA-224, 64 SHA-256, 96 SHA-384, 128 SHA-512)",
                field=field,
            )
    if not _HEX.match(hex_digest):
        raise InvalidInput(f"{algorithm} checksum must be hexadecimal", field=field)
    expected = ALGORITHM_HEX_LENGTHS[algorithm]
    if len(hex_digest) != expected:
        raise InvalidInput(
            f"{algorithm} checksum must have {expected} hex digits, got {len(hex_digest)}",
            field=field,
        )
    return f"{{{algorithm}}}{hex_digest.lower()}"


def split_checksum(value: str) -> tuple[str, str]:
    """`{SHA-256}ab..` -> ('sha256', 'ab..'), for hashlib."""
    match = _PREFIXED.match(normalize_checksum(value))
    if match is None:
        raise InvalidInput("no checksum", field="checksum")
    return HASHLIB_NAMES[match["algo"]], match["hex"]
