"""The live reference a channel holds on the version it points at, registered with the
catalogue's registry (templates_app.references) in VersionsAppConfig.ready(): a version a
channel points at is never REMOVED (its followers are rebuilt onto it, a rollback returns to
it only if it is still ACTIVE)."""

from django.db.models import OuterRef, QuerySet
from django.urls import reverse

from templates_app.models import Template
from templates_app.references import ReferenceProvider, register_reference

from .models import Channel


def channels_pointing() -> QuerySet[Channel]:
    return Channel.objects.filter(version_id=OuterRef("pk"))


def _channel_rows(template: Template) -> list[dict]:
    channels = (
        Channel.objects.filter(version=template).select_related("lineage__account").order_by("name")
    )
    return [
        {
            "kind": "channel",
            "account_id": channel.lineage.account_id,
            "id": channel.uuid,
            "name": str(channel),
            "state": f"POINTS_AT_VERSION_{template.version_number}",
            "account": channel.lineage.account.name,
            "zone": "",
            "admin_url": reverse("admin:versions_app_channel_change", args=[channel.pk]),
        }
        for channel in channels
    ]


def register_channel_references() -> None:
    register_reference(ReferenceProvider("channel", "channel", channels_pointing, _channel_rows))
