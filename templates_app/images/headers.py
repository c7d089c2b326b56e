"""HTTP headers a template's downloads send, from its details (seed 003).

Both spellings are accepted: key `HTTP_HEADER` with value `NAME:VALUE` (the seed), and key
`HTTP_HEADER:NAME` with value `VALUE` (what CloudStack stores). Names and values are checked at
registration, so nothing can smuggle a request line or take over framing headers.
"""

import re
from collections.abc import Iterable

from ..errors import InvalidInput

FORBIDDEN_NAMES = {"host", "content-length", "transfer-encoding", "connection"}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_CHARS = re.compile(r"[\r\n\x00]")


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


def validate_header_details(details: Iterable[tuple[str, str]]) -> None:
    """400 naming `details` for a header that is malformed, smuggles CR/LF/NUL, or is reserved."""
    raw = list(details)
    for key, value in raw:
        if key.startswith("HTTP_HEADER") and (_BAD_CHARS.search(key) or _BAD_CHARS.search(value)):
            raise InvalidInput("HTTP headers must not contain CR, LF or NUL", field="details")
    for name, _ in header_pairs(raw):
        if not _TOKEN.match(name):
            raise InvalidInput(f"'{name}' is not a valid HTTP header name", field="details")
        lowered = name.lower()
        if lowered in FORBIDDEN_NAMES or lowered.startswith("proxy-"):
            raise InvalidInput(
                f"HTTP header '{name}' cannot be set (Host, Content-Length, Transfer-Encoding, "
                "Connection and Proxy-* are the downloader's own)",
                field="details",
            )
