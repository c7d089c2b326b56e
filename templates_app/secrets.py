"""A template's secrets stay with its owner: a URL's query string and credentials (signed URLs,
tokens) and HTTP header values. The owning account's members and staff see them in full;
anyone else who may see the template gets the URL without them and header names without
values. One rule, applied by the API, the admin and every message that names a template."""

from .images.downloader import redact_url

REDACTED = "(hidden)"


def may_see_secrets(*, is_staff: bool, member_of: set[int], account_id: int) -> bool:
    return is_staff or account_id in member_of


def public_url(url: str) -> str:
    """The URL as others may see it: scheme, host and path only."""
    return redact_url(url) if url else url


def public_detail_value(key: str, value: str) -> str:
    """A detail's value as others may see it: an HTTP header keeps its name, loses its value
    (both spellings: `HTTP_HEADER` = `NAME:VALUE`, `HTTP_HEADER:NAME` = `VALUE`)."""
    if key == "HTTP_HEADER":
        name = value.split(":", 1)[0].strip()
        return f"{name}:{REDACTED}"
    if key.startswith("HTTP_HEADER:"):
        return REDACTED
    return value
