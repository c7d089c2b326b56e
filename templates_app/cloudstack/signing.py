"""CloudStack's request signature (HMAC-SHA1 over the sorted, re-encoded, lower-cased query)
and signature version 3's expiry."""

import base64
import hashlib
import hmac
from datetime import datetime
from urllib.parse import quote

from django.utils import timezone

from .errors import auth_failed


def signature_of(params: dict[str, str], secret: str) -> str:
    """Every parameter but `signature`, sorted by lower-cased key, joined as
    key=quote(value, safe='*') with '&', lower-cased, HMAC-SHA1 with the secret, base64.
    Values are re-encoded after form-decoding, so a space is signed as %20."""
    pairs = sorted(
        ((key, value) for key, value in params.items() if key.lower() != "signature"),
        key=lambda pair: pair[0].lower(),
    )
    message = "&".join(f"{key}={quote(value, safe='*')}" for key, value in pairs).lower()
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def parse_expires(value: str) -> datetime | None:
    """ISO 8601 (CloudStack clients send yyyy-MM-dd'T'HH:mm:ssZ, e.g. ...+0000)."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def check_signature(params: dict[str, str], secret: str) -> None:
    """401 unless the signature matches and, for signature version 3, `expires` is ahead.

    `params` keep their keys as sent; both `signatureVersion` and `signatureversion` count."""
    lowered = {key.lower(): value for key, value in params.items()}
    given = lowered.get("signature", "")
    if not given or not hmac.compare_digest(signature_of(params, secret), given):
        raise auth_failed()
    if lowered.get("signatureversion") == "3":
        expires = parse_expires(lowered.get("expires", ""))
        if expires is None or expires <= timezone.now():
            raise auth_failed()
