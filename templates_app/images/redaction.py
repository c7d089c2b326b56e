"""Redaction of secrets in text: the one function every message, event, stored error and log
record goes through (docs/security.md, "Secrets in messages, events and logs").

What is a secret here: a URL's query string, fragment and userinfo (signed URLs, tokens,
`user:password@`), the value of an HTTP header that carries credentials (`Authorization`,
`Cookie`, `X-Api-Key`, anything named like a token, key, secret, password or signature), and
the exact values the running task declared with `known_secrets` (a template's header values,
whatever their names). The rest of the text stays as it was: an error must still say what
went wrong and where (scheme, host and path).

Stdlib only, no Django: the storage worker, the agents and the web process all import it.
"""

import contextlib
import contextvars
import logging
import re
import traceback
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

REDACTED = "(hidden)"

# scheme://… up to white space, a quote or an angle bracket (how URLs end in messages and HTML).
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s'\"<>]+")
# A request target with a query string, as access logs print it ("GET /upload/x?sig=… HTTP/1.1"):
# a path that starts the word (not the path of a URL, already handled) and its query.
_PATH_QUERY = re.compile(r"(?<![\w:/.%-])(/[^\s?'\"<>]*)\?[^\s'\"<>]*")
_SECRET_NAME = (
    r"(?:proxy-)?authorization|(?:set-)?cookie"
    r"|[A-Za-z0-9_-]*(?:token|secret|passw(?:or)?d|api[-_]?key|signature|credential)[A-Za-z0-9_-]*"
)
# NAME: VALUE, NAME=VALUE, 'NAME': 'VALUE' (a dict's repr); the value ends at a line end, a
# quote or a separator. A value already redacted is left alone.
_HEADER = re.compile(
    rf"(?P<name>\b(?:{_SECRET_NAME}))(?P<sep>['\"]?\s*[:=]\s*+['\"]?+)"
    rf"(?!\(hidden\))(?P<value>[^\s'\",;&)}}\]][^\r\n'\",;&)}}\]]*)",
    re.IGNORECASE,
)
# Values shorter than this are not replaced wherever they appear (a 1-3 character "secret"
# would shred the text); they are still hidden where a header name or a URL marks them.
MIN_KNOWN_SECRET = 4

_known: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "stencil_known_secrets", default=()
)


def redact_url(url: str) -> str:
    """`url` without query string, fragment and credentials: safe for logs and messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        return f"{parts.scheme}://{netloc}{parts.path or '/'}"
    except ValueError:
        return "(malformed URL)"


def _url_in_text(match: re.Match) -> str:
    url = match.group(0)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(malformed URL)"
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return url  # nothing to hide: keep it exactly as written
    return redact_url(url)


def _header_in_text(match: re.Match) -> str:
    return f"{match.group('name')}{match.group('sep')}{REDACTED}"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every URL's query string, fragment and credentials, every credential header
    value, and each of `secrets` (plus those `known_secrets` declared) replaced."""
    if not text:
        return text
    values = {value for value in (*secrets, *_known.get()) if len(value) >= MIN_KNOWN_SECRET}
    # Longest first: a value that contains another is hidden whole.
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    if "://" in text:
        text = _URL.sub(_url_in_text, text)
    if "?" in text:
        text = _PATH_QUERY.sub(r"\1", text)
    return _HEADER.sub(_header_in_text, text)


@contextlib.contextmanager
def known_secrets(values: Iterable[str]) -> Iterator[None]:
    """While the block runs (in this thread or task context), `redact_text` also hides these
    exact values: a template's header values, whatever the header is called."""
    token = _known.set((*_known.get(), *(v for v in values if v)))
    try:
        yield
    finally:
        _known.reset(token)


def header_values(detail_pairs: Iterable[tuple[str, str]]) -> list[str]:
    """The values of a template's HTTP header details (both spellings), for `known_secrets`."""
    values = []
    for key, value in detail_pairs:
        if key == "HTTP_HEADER" and ":" in value:
            values.append(value.split(":", 1)[1].strip())
        elif key.startswith("HTTP_HEADER:"):
            values.append(value.strip())
    return values


# Logging ---------------------------------------------------------------------------------


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a log record in place: its message (arguments merged in) and its traceback."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string is logging's to report, not ours
        return record
    cleaned = redact_text(message)
    if cleaned != message:
        record.msg, record.args = cleaned, ()
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Formatters use exc_text when set: the traceback's exception texts are cleaned too.
        record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)))
        record.exc_text = record.exc_text.rstrip("\n")
    return record


class RedactingFilter(logging.Filter):
    """A logging filter that redacts (for handlers configured outside Django's LOGGING)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_installed = False


def install_log_redaction() -> None:
    """Make every log record of this process redacted when it is created, before any handler
    (console, Celery's, pytest's caplog) sees it. Idempotent."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def redacting_record_factory(*args, **kwargs) -> logging.LogRecord:
        return redact_record(make_record(*args, **kwargs))

    logging.setLogRecordFactory(redacting_record_factory)
    _installed = True
