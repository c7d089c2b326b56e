"""API shapes. Every `id` is the object's public UUID; writes go through services."""

import functools

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import ISO_8601, serializers
from rest_framework.settings import api_settings

from templates_app import secrets
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
    removal_not_before,
)
from templates_app.selectors import account_ids_of, templates_visible_to
from templates_app.services import VERSION_NAME_MAX_LENGTH


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
            "max_vms",
            "used_templates",
            "used_secondary_bytes",
            "created_at",
        ]
        read_only_fields = ["used_templates", "used_secondary_bytes"]


class TemplateDetailSerializer(serializers.ModelSerializer):
    class Meta:
        model = TemplateDetail
        fields = ["key", "value"]


class StaffOnlyFieldsMixin:
    """Infrastructure (hosts, pools, stores, paths) is for staff: other callers get null in
    `staff_only_fields` (CloudStack shows these to root admins only). Without a request in the
    serializer's context, nothing is shown."""

    staff_only_fields: tuple[str, ...] = ()

    def to_representation(self, instance):
        data = super().to_representation(instance)
        request = self.context.get("request")
        if not (request is not None and request.user.is_staff):
            for name in self.staff_only_fields:
                if name in data:
                    data[name] = None
        return data


class StoreCopySerializer(StaffOnlyFieldsMixin, serializers.ModelSerializer):
    store = serializers.UUIDField(
        source="store.uuid", default=None, read_only=True, allow_null=True
    )
    store_name = serializers.CharField(
        source="store.name", default=None, read_only=True, allow_null=True
    )
    zone = serializers.UUIDField(source="store.zone.uuid", default=None, read_only=True)
    install_path = serializers.CharField(read_only=True, allow_null=True)
    staff_only_fields = ("store", "store_name", "install_path")

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


def dotted_errors(detail):
    """{"version": {"base_template": [...]}} -> {"version.base_template": [...]}: one level of
    nesting, so a 400 names the field as the docs do."""
    if not isinstance(detail, dict):
        return detail
    flat = {}
    for name, errors in detail.items():
        if not isinstance(errors, dict):
            flat[name] = errors
            continue
        for inner, inner_errors in errors.items():
            key = name if inner == api_settings.NON_FIELD_ERRORS_KEY else f"{name}.{inner}"
            flat[key] = inner_errors
    return flat


class DottedErrorsMixin:
    """Errors of a nested section are reported as `section.field`."""

    def run_validation(self, data=serializers.empty):
        try:
            return super().run_validation(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError(dotted_errors(exc.detail)) from exc


def refuse_unknown_keys(data, known, editable) -> None:
    """A key outside `known` is a 400 naming it (a typo or a read-only field must not pass)."""
    unknown = sorted(set(data) - set(known)) if hasattr(data, "keys") else []
    if unknown:
        raise serializers.ValidationError(
            {unknown[0]: [f"cannot be changed; editable fields: {', '.join(editable)}"]}
        )


class TemplateVersionSerializer(serializers.Serializer):
    """`version` of a template: its base template (null for a base), name and number."""

    base_template = serializers.UUIDField(
        source="base.uuid",
        default=None,
        allow_null=True,
        read_only=True,
        help_text="Id of the base template; null for a base template (version 1).",
    )
    version_name = serializers.CharField(read_only=True)
    version_number = serializers.IntegerField(read_only=True)


# What each of the listing's time fields answers (none has options of its own), for its fast
# path: without binding the serializer's 27 fields (`self.fields`) per response. Module level:
# a Field on the class would become a declared field.
_LISTED_TIME = serializers.DateTimeField(read_only=True)


def listed_time_formatter():
    """_LISTED_TIME.to_representation with the current time zone looked up once (per page,
    not per value): ISO 8601 in that zone, 'Z' for UTC, as DRF writes it (a test compares)."""
    zone = _LISTED_TIME.default_timezone()
    if str(api_settings.DATETIME_FORMAT).lower() != ISO_8601 or zone is None:
        return _LISTED_TIME.to_representation

    def represent(value):
        if value is None or value.tzinfo is None:
            return _LISTED_TIME.to_representation(value)
        text = value.astimezone(zone).isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text

    return represent


class TemplateSerializer(serializers.ModelSerializer):
    """A template as listed: no per-copy rows, so a page costs a fixed number of queries."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    account = serializers.UUIDField(source="account.uuid", read_only=True)
    account_name = serializers.CharField(source="account.name", read_only=True)
    zones = serializers.SerializerMethodField()
    details = serializers.SerializerMethodField()
    references = serializers.IntegerField(read_only=True, default=0)
    version = TemplateVersionSerializer(source="*", read_only=True)
    removal_not_before = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="INACTIVE only: the GC sweep keeps it (and it can be reactivated) at least "
        "until then (its delete + STENCIL_GC_GRACE_SECONDS), longer while something references "
        "it; null in any other state.",
    )

    class Meta:
        model = Template
        fields = [
            "id",
            "unique_name",
            "name",
            "display_text",
            "version",
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
            "deactivated_at",
            "removal_not_before",
            "removed_at",
            "references",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_zones(self, template: Template) -> list[str]:
        return [str(zone.uuid) for zone in template.zones.all()]

    @extend_schema_field(TemplateDetailSerializer(many=True))
    def get_details(self, template: Template) -> list[dict]:
        return [{"key": d.key, "value": d.value} for d in template.details.all()]

    # The columns of a listed row (the listing's fast path: templates_app.statements).
    LISTED_COLUMNS = (
        "uuid",
        "unique_name",
        "name",
        "display_text",
        "base__uuid",
        "version_name",
        "version_number",
        "kind",
        "format",
        "url",
        "checksum",
        "os_type",
        "hypervisor",
        "account_id",
        "account__uuid",
        "account__name",
        "cross_zones",
        "is_public",
        "is_featured",
        "direct_download",
        "primary_policy",
        "state",
        "deactivated_at",
        "removed_at",
        "references",
        "created_at",
        "updated_at",
    )

    def to_representation(self, template: Template) -> dict:
        data = super().to_representation(template)
        if not self._may_see_secrets(template.account_id):
            self._hide_secrets(data)
        return data

    @functools.cached_property
    def _listed_time(self):
        return listed_time_formatter()

    def listed_representation(self, row: dict, zones: list, details: list[dict]) -> dict:
        """A listed row (LISTED_COLUMNS, its zone uuids and details) as the fields would
        represent its template (a test compares both), without a model or 27 bound fields
        per row: at 50 rows a page, they were most of the listing's time."""
        time = self._listed_time
        base = row["base__uuid"]
        data = {
            "id": str(row["uuid"]),
            "unique_name": row["unique_name"],
            "name": row["name"],
            "display_text": row["display_text"],
            "version": {
                "base_template": None if base is None else str(base),
                "version_name": row["version_name"],
                "version_number": row["version_number"],
            },
            "kind": row["kind"],
            "format": row["format"],
            "url": row["url"],
            "checksum": row["checksum"],
            "os_type": row["os_type"],
            "hypervisor": row["hypervisor"],
            "account": str(row["account__uuid"]),
            "account_name": row["account__name"],
            "zones": [str(zone) for zone in zones],
            "cross_zones": row["cross_zones"],
            "is_public": row["is_public"],
            "is_featured": row["is_featured"],
            "direct_download": row["direct_download"],
            "primary_policy": row["primary_policy"],
            "details": [dict(detail) for detail in details],
            "state": row["state"],
        }
        removal = removal_not_before(row["state"], row["deactivated_at"], row["updated_at"])
        for name, value in (
            ("deactivated_at", row["deactivated_at"]),
            ("removal_not_before", removal),
            ("removed_at", row["removed_at"]),
        ):
            data[name] = None if value is None else time(value)
        data["references"] = row["references"] or 0
        data["created_at"] = time(row["created_at"])
        data["updated_at"] = time(row["updated_at"])
        if not self._may_see_secrets(row["account_id"]):
            self._hide_secrets(data)
        return data

    @staticmethod
    def _hide_secrets(data: dict) -> None:
        data["url"] = secrets.public_url(data["url"])
        for detail in data["details"]:
            detail["value"] = secrets.public_detail_value(detail["key"], detail["value"])

    def _may_see_secrets(self, account_id: int) -> bool:
        """The caller's account ids are read once per response (the context is shared by the
        rows of a list)."""
        request = self.context.get("request")
        if request is None:
            return False
        if "member_of" not in self.context:
            self.context["member_of"] = set(account_ids_of(request.user))
        return secrets.may_see_secrets(
            is_staff=request.user.is_staff,
            member_of=self.context["member_of"],
            account_id=account_id,
        )


class TemplateDetailViewSerializer(TemplateSerializer):
    """One template: adds its copies on image stores (download progress, errors)."""

    copies = StoreCopySerializer(source="store_refs", many=True, read_only=True)

    class Meta(TemplateSerializer.Meta):
        fields = [*TemplateSerializer.Meta.fields, "copies"]
        read_only_fields = fields


class VisibleTemplateField(UuidRelatedField):
    """A template by id among those the caller can see: another account's private one is
    as unknown as an id that does not exist."""

    def get_queryset(self):
        return templates_visible_to(self.context["request"].user)


class TemplateVersionCreateSerializer(serializers.Serializer):
    """The `version` section of POST /templates/: makes the new template a version."""

    base_template = VisibleTemplateField(
        queryset=Template.objects.none(),
        help_text="Id of the base template (not of a version of it).",
    )
    version_name = serializers.CharField(
        max_length=VERSION_NAME_MAX_LENGTH, required=False, allow_blank=True, default=""
    )
    version_number = serializers.IntegerField(
        required=False, help_text="Ignored: the server gives the lineage's next number."
    )


REGISTRATION_REQUIRED = ("name", "format", "url")


class TemplateCreateSerializer(DottedErrorsMixin, serializers.Serializer):
    """Input of POST /templates/ (CloudStack's registerTemplate / registerIso).

    With a `version` section it registers a new version of `version.base_template`; every
    field not sent is then the base template's (name, format, url and checksum included).
    """

    name = serializers.CharField(
        max_length=128, required=False, help_text="Required unless `version` is given."
    )
    display_text = serializers.CharField(max_length=4096, required=False, allow_blank=True)
    kind = serializers.ChoiceField(choices=TemplateKind.choices, default=TemplateKind.TEMPLATE)
    format = serializers.ChoiceField(
        choices=TemplateFormat.choices,
        required=False,
        help_text="Required unless `version` is given.",
    )
    url = serializers.CharField(
        max_length=2048, required=False, help_text="Required unless `version` is given."
    )
    checksum = serializers.CharField(max_length=160, required=False, allow_blank=True)
    os_type = serializers.CharField(max_length=128, required=False, allow_blank=True)
    hypervisor = serializers.ChoiceField(choices=Hypervisor.choices, default=Hypervisor.KVM)
    zones = UuidRelatedField(queryset=Zone.objects.all(), many=True, required=False)
    cross_zones = serializers.BooleanField(default=False)
    is_public = serializers.BooleanField(default=False)
    is_featured = serializers.BooleanField(default=False)
    direct_download = serializers.BooleanField(default=False)
    verify = serializers.BooleanField(
        default=False,
        help_text="Direct download only: the checking host streams the whole image, hashes and "
        "inspects it before registration succeeds (the computed SHA-256 is stored).",
    )
    primary_policy = serializers.ChoiceField(
        choices=PrimaryPolicy.choices, default=PrimaryPolicy.CACHE
    )
    details = serializers.JSONField(required=False)
    account = UuidRelatedField(
        queryset=Account.objects.all(),
        required=False,
        help_text="Owner account (administrators only).",
    )
    version = TemplateVersionCreateSerializer(
        required=False, help_text="Register a new version of a base template."
    )

    def validate(self, attrs):
        if "version" not in attrs:
            missing = [name for name in REGISTRATION_REQUIRED if name not in attrs]
            if missing:
                message = self.fields[missing[0]].error_messages["required"]
                raise serializers.ValidationError({name: [message] for name in missing})
        return attrs

    def registration_fields(self) -> dict:
        """Keyword arguments of the registration service; for a version, only what was sent
        (the rest is the base's)."""
        data = dict(self.validated_data)
        data.pop("account", None)
        if data.pop("version", None) is not None:
            data = {name: value for name, value in data.items() if name in self.initial_data}
        if "format" in data:
            data["image_format"] = data.pop("format")
        return data

    def validate_account(self, value: Account) -> Account:
        if not self.context["request"].user.is_staff:
            raise serializers.ValidationError(
                "only administrators may register for another account"
            )
        return value


class TemplateVersionUpdateSerializer(serializers.Serializer):
    """The `version` section of PATCH: only `version_name` changes. The base and the number
    may be sent back unchanged; another value is a 400 naming the field."""

    base_template = serializers.UUIDField(required=False, allow_null=True)
    version_name = serializers.CharField(
        max_length=VERSION_NAME_MAX_LENGTH, required=False, allow_blank=True
    )
    version_number = serializers.IntegerField(required=False)

    def to_internal_value(self, data):
        refuse_unknown_keys(data, self.fields, ["version_name"])
        return super().to_internal_value(data)

    def validate(self, attrs):
        template = self.context["template"]
        base_uuid = template.base.uuid if template.base_id else None
        if "base_template" in attrs and attrs["base_template"] != base_uuid:
            raise serializers.ValidationError(
                {"base_template": ["cannot be changed: a template stays in its lineage"]}
            )
        if "version_number" in attrs and attrs["version_number"] != template.version_number:
            raise serializers.ValidationError(
                {"version_number": ["cannot be changed: the server numbers versions"]}
            )
        return attrs


class TemplateUpdateSerializer(DottedErrorsMixin, serializers.Serializer):
    """PATCH: name, display text, os type, public, version name; featured by administrators."""

    name = serializers.CharField(max_length=128, required=False)
    display_text = serializers.CharField(max_length=4096, required=False, allow_blank=True)
    os_type = serializers.CharField(max_length=128, required=False, allow_blank=True)
    is_public = serializers.BooleanField(required=False)
    is_featured = serializers.BooleanField(required=False)
    version = TemplateVersionUpdateSerializer(
        required=False, help_text="Only `version_name` can change."
    )

    def to_internal_value(self, data):
        refuse_unknown_keys(data, self.fields, self.fields)
        return super().to_internal_value(data)

    def changes(self) -> dict:
        """What `services.template_update` should change."""
        data = dict(self.validated_data)
        version = data.pop("version", None) or {}
        if "version_name" in version:
            data["version_name"] = version["version_name"]
        return data


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


class ReferencesSerializer(serializers.Serializer):
    counts = serializers.DictField(
        child=serializers.IntegerField(), help_text="Live references per kind (all accounts)."
    )
    references = ReferenceSerializer(
        many=True, help_text="The holders: all for staff, your account's for others."
    )


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


class TemplateCopySerializer(serializers.Serializer):
    """POST /templates/{id}/copy/: CloudStack's copyTemplate."""

    zones = UuidRelatedField(queryset=Zone.objects.all(), many=True, allow_empty=False)


class TemplateExtractRequestSerializer(serializers.Serializer):
    """POST /templates/{id}/extract/: CloudStack's extractTemplate (mode HTTP_DOWNLOAD)."""

    zone = UuidRelatedField(
        queryset=Zone.objects.all(),
        required=False,
        allow_null=True,
        help_text="Extract from a store of this zone (default: any zone of the template).",
    )


class ExtractCopySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.CharField()
    download_state = serializers.CharField()
    download_percent = serializers.IntegerField()
    error_text = serializers.CharField()


class TemplateExtractSerializer(serializers.Serializer):
    """The answer: `url` (signed, until `expires_at`) once a store copy is READY (200); while
    the copy is being made, state COPYING_TO_STORE, `url` null and the copy's progress (202)."""

    id = serializers.UUIDField()
    name = serializers.CharField()
    state = serializers.ChoiceField(choices=["DOWNLOAD_URL_CREATED", "COPYING_TO_STORE"])
    url = serializers.URLField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    zone = serializers.UUIDField()
    zone_name = serializers.CharField()
    extract_mode = serializers.CharField()
    copy = ExtractCopySerializer()


class TemplatePermissionsSerializer(serializers.Serializer):
    """POST /templates/{id}/permissions/: CloudStack's updateTemplatePermissions."""

    op = serializers.ChoiceField(choices=["add", "remove", "reset"])
    accounts = UuidRelatedField(
        queryset=Account.objects.all(), many=True, required=False, default=list
    )


class TemplatePermissionsViewSerializer(serializers.Serializer):
    template = serializers.UUIDField()
    accounts = serializers.ListField(child=serializers.UUIDField())
