"""HTTP headers a template's downloads send, from its details (seed 003).

Both spellings are accepted: key `HTTP_HEADER` with value `NAME:VALUE` (the seed), and key
`HTTP_HEADER:NAME` with value `VALUE` (what CloudStack stores). Names and values are checked at
registration (400 naming `details`), and again by the downloader before it sends them: one
rule, `check_header`, so a row written before a rule existed fails its download with a clear
error instead of crashing a task.
"""

import re
from collections.abc import Iterable

from ..errors import InvalidInput

# The downloader's own: framing, connection handling, and the ranges and encodings it asks for.
FORBIDDEN_NAMES = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "trailer",
    "te",
    "upgrade",
    "range",
    "if-range",
    "accept-encoding",
}
# Matched with fullmatch: `$` would also accept a trailing newline.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_CHARS = re.compile(r"[\r\n\x00]")
# RFC 9110 field-value: visible ASCII, spaces and tabs inside.
_FIELD_VALUE = re.compile(r"([\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?)?")


def header_pairs(details: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(name, value) of every HTTP header detail, in order; other details are ignored."""
    pairs = []
    for key, value in details:
        if key == "HTTP_HEADER":
            name, _, header_value = value.partition(":")
        elif key.startswith("HTTP_HEADER:"):
            name, header_value = key.partition(":")[2], value
        else:
            continue
        pairs.append((name.strip(), header_value.strip()))
    return pairs


FORBIDDEN_TEXT = (
    "Host, Content-Length, Transfer-Encoding, Connection, Keep-Alive, Trailer, TE, Upgrade, "
    "Range, If-Range, Accept-Encoding and Proxy-* are the downloader's own"
)


class BadHeader(InvalidInput):
    """A header the rules refuse; the message names the header and the rule."""

    code = "bad_header"

    def __init__(self, message: str):
        super().__init__(message, field="details")


def check_header(name: str, value: str) -> None:
    """Refuse a header whose name is not an RFC 9110 token or is reserved (case-insensitive),
    or whose value is not visible ASCII (spaces and tabs only inside)."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise BadHeader(f"{name!r} is not a valid HTTP header name (RFC 9110 token)")
    lowered = name.lower()
    if lowered in FORBIDDEN_NAMES or lowered.startswith("proxy-"):
        raise BadHeader(f"HTTP header '{name}' cannot be set ({FORBIDDEN_TEXT})")
    if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
        raise BadHeader(
            f"the value of HTTP header '{name}' must be visible ASCII (RFC 9110 field-value)"
        )


def validate_header_details(details: Iterable[tuple[str, str]]) -> None:
    """400 naming `details` for a header that is malformed, smuggles CR/LF/NUL, or is reserved."""
    raw = list(details)
    for key, value in raw:
        if key.startswith("HTTP_HEADER") and (_BAD_CHARS.search(key) or _BAD_CHARS.search(value)):
            raise BadHeader("HTTP headers must not contain CR, LF or NUL")
    for name, value in header_pairs(raw):
        check_header(name, value)
