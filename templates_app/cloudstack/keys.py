"""API key pairs: made and regenerated here, the secret kept encrypted with a key from settings
(STENCIL_API_KEY_ENCRYPTION_KEY), as CloudStack keeps it; read back only to check a signature."""

import base64
import hashlib
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import transaction

from templates_app.errors import InvalidInput

from .models import ApiKey

KEY_BYTES = 64  # 86 characters of URL-safe base64, as CloudStack's keys


def _fernet() -> Fernet:
    """Any string in settings works: it is stretched to Fernet's 32-byte key."""
    material = hashlib.sha256(settings.STENCIL_API_KEY_ENCRYPTION_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(material))


def encrypt_secret(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt_secret(token: str) -> str | None:
    """None when the encryption key changed since the pair was made: the pair no longer works."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return None


@dataclass(frozen=True)
class KeyPair:
    api_key: str
    secret_key: str


@transaction.atomic
def api_keys_create(*, user, regenerate: bool = False) -> KeyPair:
    """A new key pair for `user`; with `regenerate` it replaces the old one (which stops
    working at once). The secret is returned here and never shown again."""
    existing = ApiKey.objects.select_for_update().filter(user=user).first()
    if existing is not None and not regenerate:
        raise InvalidInput(
            f"user '{user.get_username()}' already has API keys; regenerate to replace them",
            field="regenerate",
        )
    pair = KeyPair(secrets.token_urlsafe(KEY_BYTES), secrets.token_urlsafe(KEY_BYTES))
    ApiKey.objects.update_or_create(
        user=user,
        defaults={"api_key": pair.api_key, "secret_encrypted": encrypt_secret(pair.secret_key)},
    )
    return pair


def user_and_secret_of(api_key: str) -> tuple[object, str] | None:
    """The active user holding `api_key` and their secret, or None."""
    row = ApiKey.objects.select_related("user").filter(api_key=api_key).first()
    if row is None or not row.user.is_active:
        return None
    secret = decrypt_secret(row.secret_encrypted)
    return None if secret is None else (row.user, secret)
