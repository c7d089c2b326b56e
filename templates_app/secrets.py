"""A template's secrets stay with its owner: a URL's query string and credentials (signed URLs,
tokens) and HTTP header values. The owning account's members and staff see them in full;
anyone else who may see the template gets the URL without them and header names without
values. One rule, applied by the API, the admin and every message that names a template."""

from .images.redaction import REDACTED, redact_url


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


class AdminSecrets:
    """What one admin request may see: the owning account's members and superusers see a
    template's secrets in full; other staff see them as other accounts do in the API. Made per
    request (the admin's inline instances are) and asked per row."""

    def __init__(self, user):
        self.superuser = user.is_superuser
        self._user = user
        self._member_of: set[int] | None = None

    def may_see(self, account_id: int) -> bool:
        if self.superuser:
            return True
        if self._member_of is None:
            from .selectors import account_ids_of

            self._member_of = set(account_ids_of(self._user))
        return account_id in self._member_of

    def url(self, template) -> str:
        return template.url if self.may_see(template.account_id) else public_url(template.url)

    def detail_value(self, detail) -> str:
        if self.may_see(detail.template.account_id):
            return detail.value
        return public_detail_value(detail.key, detail.value)
