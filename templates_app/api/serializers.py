"""API shapes. Every `id` is the object's public UUID; writes go through services."""

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from templates_app.choices import (
    Hypervisor,
    PrimaryPolicy,
    TemplateFormat,
    TemplateKind,
)
from templates_app.models import (
    Account,
    Event,
    ImageStore,
    Template,
    TemplateDetail,
    TemplateStoreRef,
    Zone,
)


class UuidRelatedField(serializers.SlugRelatedField):
    """A related object named by its public UUID; an unknown or malformed id says so."""

    default_error_messages = {
        "does_not_exist": "unknown {model} id '{value}'",
        "invalid": "must be a UUID",
    }

    def __init__(self, **kwargs):
        super().__init__(slug_field="uuid", **kwargs)

    def to_internal_value(self, data):
        queryset = self.get_queryset()
        try:
            return queryset.get(uuid=data)
        except DjangoValidationError:
            self.fail("invalid")
        except (queryset.model.DoesNotExist, ValueError, TypeError):
            self.fail("does_not_exist", model=queryset.model._meta.verbose_name, value=str(data))


class ZoneSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)

    class Meta:
        model = Zone
        fields = ["id", "name", "description", "created_at"]


class ImageStoreSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    zone = UuidRelatedField(queryset=Zone.objects.all())

    class Meta:
        model = ImageStore
        fields = [
            "id",
            "name",
            "zone",
            "path",
            "state",
            "capacity_bytes",
            "used_bytes",
            "created_at",
        ]
        read_only_fields = ["used_bytes"]


class AccountSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)

    class Meta:
        model = Account
        fields = [
            "id",
            "name",
            "max_templates",
            "max_secondary_bytes",
            "used_templates",
            "used_secondary_bytes",
            "created_at",
        ]
        read_only_fields = ["used_templates", "used_secondary_bytes"]


class TemplateDetailSerializer(serializers.ModelSerializer):
    class Meta:
        model = TemplateDetail
        fields = ["key", "value"]


class StoreCopySerializer(serializers.ModelSerializer):
    store = serializers.UUIDField(source="store.uuid", default=None, read_only=True)
    store_name = serializers.CharField(source="store.name", default=None, read_only=True)
    zone = serializers.UUIDField(source="store.zone.uuid", default=None, read_only=True)

    class Meta:
        model = TemplateStoreRef
        fields = [
            "store",
            "store_name",
            "zone",
            "download_state",
            "state",
            "download_percent",
            "downloaded_bytes",
            "size",
            "physical_size",
            "install_path",
            "error_text",
            "updated_at",
        ]


class TemplateSerializer(serializers.ModelSerializer):
    """A template as listed: no per-copy rows, so a page costs a fixed number of queries."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    account = serializers.UUIDField(source="account.uuid", read_only=True)
    account_name = serializers.CharField(source="account.name", read_only=True)
    zones = serializers.SerializerMethodField()
    details = TemplateDetailSerializer(many=True, read_only=True)
    references = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = Template
        fields = [
            "id",
            "unique_name",
            "name",
            "display_text",
            "kind",
            "format",
            "url",
            "checksum",
            "os_type",
            "hypervisor",
            "account",
            "account_name",
            "zones",
            "cross_zones",
            "is_public",
            "is_featured",
            "direct_download",
            "primary_policy",
            "details",
            "state",
            "removed_at",
            "references",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_zones(self, template: Template) -> list[str]:
        return [str(zone.uuid) for zone in template.zones.all()]


class TemplateDetailViewSerializer(TemplateSerializer):
    """One template: adds its copies on image stores (download progress, errors)."""

    copies = StoreCopySerializer(source="store_refs", many=True, read_only=True)

    class Meta(TemplateSerializer.Meta):
        fields = [*TemplateSerializer.Meta.fields, "copies"]
        read_only_fields = fields


class TemplateCreateSerializer(serializers.Serializer):
    """Input of POST /templates/ (CloudStack's registerTemplate / registerIso)."""

    name = serializers.CharField(max_length=128)
    display_text = serializers.CharField(max_length=4096, required=False, allow_blank=True)
    kind = serializers.ChoiceField(choices=TemplateKind.choices, default=TemplateKind.TEMPLATE)
    format = serializers.ChoiceField(choices=TemplateFormat.choices)
    url = serializers.CharField(max_length=2048)
    checksum = serializers.CharField(max_length=160, required=False, allow_blank=True)
    os_type = serializers.CharField(max_length=128, required=False, allow_blank=True)
    hypervisor = serializers.ChoiceField(choices=Hypervisor.choices, default=Hypervisor.KVM)
    zones = UuidRelatedField(queryset=Zone.objects.all(), many=True, required=False)
    cross_zones = serializers.BooleanField(default=False)
    is_public = serializers.BooleanField(default=False)
    is_featured = serializers.BooleanField(default=False)
    direct_download = serializers.BooleanField(default=False)
    primary_policy = serializers.ChoiceField(
        choices=PrimaryPolicy.choices, default=PrimaryPolicy.CACHE
    )
    details = serializers.JSONField(required=False)
    account = UuidRelatedField(
        queryset=Account.objects.all(),
        required=False,
        help_text="Owner account (administrators only).",
    )

    def validate_is_featured(self, value: bool) -> bool:
        if value and not self.context["request"].user.is_staff:
            raise serializers.ValidationError("only administrators may feature a template")
        return value

    def validate_account(self, value: Account) -> Account:
        if not self.context["request"].user.is_staff:
            raise serializers.ValidationError(
                "only administrators may register for another account"
            )
        return value


class TemplateUpdateSerializer(serializers.Serializer):
    """PATCH: name, display text, os type, public; featured by administrators."""

    name = serializers.CharField(max_length=128, required=False)
    display_text = serializers.CharField(max_length=4096, required=False, allow_blank=True)
    os_type = serializers.CharField(max_length=128, required=False, allow_blank=True)
    is_public = serializers.BooleanField(required=False)
    is_featured = serializers.BooleanField(required=False)

    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields)) if hasattr(data, "keys") else []
        if unknown:
            raise serializers.ValidationError(
                {unknown[0]: [f"cannot be changed; editable fields: {', '.join(self.fields)}"]}
            )
        return super().to_internal_value(data)


class TemplateDeleteResultSerializer(serializers.Serializer):
    template = TemplateSerializer()
    references = serializers.IntegerField(help_text="Live references still holding the bytes.")


class ReferenceSerializer(serializers.Serializer):
    kind = serializers.CharField()
    id = serializers.UUIDField()
    name = serializers.CharField()
    state = serializers.CharField()
    account = serializers.CharField()
    zone = serializers.CharField()


class EventSerializer(serializers.ModelSerializer):
    object_type = serializers.CharField(source="content_type.model", read_only=True)
    object_id = serializers.UUIDField(source="object_uuid", read_only=True)
    actor = serializers.CharField(source="actor_label", read_only=True)

    class Meta:
        model = Event
        fields = [
            "id",
            "object_type",
            "object_id",
            "object_repr",
            "field",
            "from_state",
            "to_state",
            "actor",
            "reason",
            "created_at",
        ]


class GcSweepRequestSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField(default=False)


class GcSweepResultSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField()
    skipped = serializers.BooleanField(help_text="Another sweep was running; nothing was done.")
    removed_count = serializers.IntegerField()
    removed = serializers.ListField(child=serializers.DictField())
    held_count = serializers.IntegerField()
    held = serializers.ListField(child=serializers.DictField())
    copies_destroyed = serializers.IntegerField()
    pool_copies = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Cached copies on primary pools marked for eviction, and being evicted.",
    )


class UploadParamsRequestSerializer(serializers.Serializer):
    """Input of POST /templates/upload-params/ (CloudStack's getUploadParamsForTemplate)."""

    name = serializers.CharField(max_length=128)
    display_text = serializers.CharField(max_length=4096, required=False, allow_blank=True)
    kind = serializers.ChoiceField(choices=TemplateKind.choices, default=TemplateKind.TEMPLATE)
    format = serializers.ChoiceField(choices=TemplateFormat.choices)
    zone = UuidRelatedField(queryset=Zone.objects.all())
    os_type = serializers.CharField(max_length=128, required=False, allow_blank=True)
    checksum = serializers.CharField(max_length=160, required=False, allow_blank=True)
    size = serializers.IntegerField(
        min_value=0, required=False, default=0, help_text="Bytes to charge to the account."
    )
    is_public = serializers.BooleanField(default=False)


class UploadParamsSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    post_url = serializers.URLField()
    metadata = serializers.CharField(help_text="Send back as the X-Metadata header.")
    expires = serializers.CharField(help_text="UTC; send back as the X-Expires header.")
    signature = serializers.CharField(help_text="Send back as the X-Signature header.")
