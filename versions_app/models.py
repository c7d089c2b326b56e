"""Versions live on Template (templates_app.models): `base`, `version_number`, `version_name`.

A version is a Template of its own whose `base` is the lineage's base template (version 1);
numbers are assigned by `versions_app.services.template_version_create` under the base's row
lock. This app's own table is the lineage's channels.
"""

import uuid as uuid_lib

from django.core.validators import RegexValidator
from django.db import models

from templates_app.models import Template

CHANNEL_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
CHANNEL_NAME_RULE = "a lowercase letter, then up to 31 lowercase letters, digits or '-'"
LATEST = "latest"
STABLE = "stable"
CANARY = "canary"
# Every lineage has these without anyone creating them; their rows are made on first use.
STORED_BUILT_IN_CHANNELS = (STABLE, CANARY)
# 'latest' is computed (the newest ACTIVE version an account may use), never stored or moved.
BUILT_IN_CHANNELS = (LATEST, *STORED_BUILT_IN_CHANNELS)


class Channel(models.Model):
    """A named pointer of a lineage at one of its versions (or at nothing), that VMs and VM
    pools follow. Moved by `versions_app.channels.channel_promote` / `channel_rollback`; each
    move is an Event (field "version", from/to: version numbers)."""

    uuid = models.UUIDField("ID", default=uuid_lib.uuid4, unique=True, editable=False)
    lineage = models.ForeignKey(
        Template,
        on_delete=models.PROTECT,
        related_name="channels",
        help_text="The lineage's base template (version 1).",
    )
    name = models.CharField(
        max_length=32,
        validators=[RegexValidator(CHANNEL_NAME_PATTERN, CHANNEL_NAME_RULE)],
    )
    version = models.ForeignKey(
        Template,
        on_delete=models.PROTECT,
        related_name="channel_pointers",
        null=True,
        blank=True,
        help_text="The version it points at (a live reference: never REMOVED while here).",
    )
    previous_version = models.ForeignKey(
        Template,
        on_delete=models.PROTECT,
        related_name="+",
        null=True,
        blank=True,
        help_text="Where it pointed before its last move: where a rollback takes it.",
    )
    moved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["lineage_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["lineage", "name"], name="channel_name_unique"),
            models.CheckConstraint(
                condition=~models.Q(name=LATEST), name="channel_latest_is_computed"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.lineage.name}:{self.name}"

    @property
    def account_id(self) -> int:
        """A channel belongs to its lineage's account (events and tenancy go by it)."""
        return self.lineage.account_id
