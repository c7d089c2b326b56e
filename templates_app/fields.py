"""Model fields that never store a secret: error texts and event reasons are redacted on their
way into the database (`images.redaction.redact_text`), whoever writes them — a save, an
`update()`, a `bulk_create`, a service, a task or an agent. One rule at the one door every
write goes through, so no error path can forget it (docs/security.md)."""

from django.db import models

from .images.redaction import redact_text


class _Redacted:
    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return redact_text(value) if isinstance(value, str) else value


# Both deconstruct as the plain Django field: redaction changes values, not the schema, so
# swapping a field for its redacted kind needs no migration.


class RedactedTextField(_Redacted, models.TextField):
    """A TextField whose values lose URL query strings, credentials and header values."""

    def deconstruct(self):
        name, _path, args, kwargs = models.TextField.deconstruct(self)
        return name, "django.db.models.TextField", args, kwargs


class RedactedCharField(_Redacted, models.CharField):
    """A CharField whose values lose URL query strings, credentials and header values."""

    def deconstruct(self):
        name, _path, args, kwargs = models.CharField.deconstruct(self)
        return name, "django.db.models.CharField", args, kwargs
