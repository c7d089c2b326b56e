from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents_app.models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine, VmPool
from templates_app.api.serializers import (
    StaffOnlyFieldsMixin,
    UuidRelatedField,
    VisibleTemplateField,
)
from templates_app.models import Template, Zone

POOL_TYPES = [("dir", "Directory")]


class FollowSerializer(serializers.Serializer):
    """What a stateless VM or VM pool follows instead of a fixed version."""

    channel = serializers.CharField(
        max_length=64,
        help_text="A channel of the template's lineage: 'latest' (the newest ACTIVE version "
        "you may use), 'stable', 'canary' or one its owner created.",
    )


def follow_of(obj) -> dict | None:
    return {"channel": obj.follow_channel} if obj.follow_channel else None


class VirtualMachineSerializer(StaffOnlyFieldsMixin, serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    template = serializers.UUIDField(source="template.uuid", read_only=True)
    template_name = serializers.CharField(source="template.name", read_only=True)
    zone = serializers.UUIDField(source="zone.uuid", read_only=True)
    account = serializers.UUIDField(source="account.uuid", read_only=True)
    host = serializers.CharField(source="host.name", default=None, read_only=True, allow_null=True)
    pool = serializers.CharField(source="pool.name", default=None, read_only=True, allow_null=True)
    root_disk_path = serializers.CharField(read_only=True, allow_null=True)
    staff_only_fields = ("host", "pool", "root_disk_path")
    use_latest_template_version = serializers.SerializerMethodField(
        help_text="Follows the newest ACTIVE version of the template's lineage; always false "
        "for a stateful VM."
    )
    follow = serializers.SerializerMethodField(
        help_text='The channel it follows, `{"channel": "canary"}`; null: it keeps its version.'
    )

    class Meta:
        model = VirtualMachine
        fields = [
            "id",
            "name",
            "template",
            "template_name",
            "stateless",
            "use_latest_template_version",
            "follow",
            "zone",
            "account",
            "host",
            "pool",
            "state",
            "error_text",
            "root_disk_path",
            "destroyed_at",
            "expunged_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_use_latest_template_version(self, vm: VirtualMachine) -> bool:
        return vm.stateless and vm.use_latest_template_version

    @extend_schema_field(FollowSerializer(allow_null=True))
    def get_follow(self, vm: VirtualMachine) -> dict | None:
        return follow_of(vm) if vm.stateless else None


class VirtualMachineCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=128)
    # Another tenant's private template is "unknown", exactly like a wrong id (one query).
    template = VisibleTemplateField(queryset=Template.objects.none())
    zone = UuidRelatedField(queryset=Zone.objects.all())
    deploy = serializers.BooleanField(
        default=True,
        help_text="Place the VM on an Up host of the zone: its agent makes the disk and starts "
        "the domain (answers at once with state STARTING); 409 when no Up host reaches a "
        "pool. `false` makes a VM record only, with no host.",
    )
    stateless = serializers.BooleanField(
        default=False,
        help_text="Its disk changes are discarded when it stops (rebuilt from its template).",
    )
    use_latest_template_version = serializers.BooleanField(
        default=False,
        help_text="Stateless VMs only (else 400): deploy from the newest ACTIVE version of the "
        "template's lineage, and follow new versions (rebuilt when stopped). The same as "
        '`"follow": {"channel": "latest"}`.',
    )
    follow = FollowSerializer(
        required=False,
        allow_null=True,
        help_text="Stateless VMs only (else 400): deploy from the channel's version and follow "
        "it (rebuilt when stopped, or when it next stops, each time the channel moves).",
    )


class VirtualMachineDestroySerializer(serializers.Serializer):
    expunge = serializers.BooleanField(default=False)
    delete_snapshot_metadata = serializers.BooleanField(
        default=False,
        help_text="Allow it when the VM has snapshots: their libvirt metadata is deleted "
        "(VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA); the data in the disk volume is kept.",
    )
    delete_managed_save = serializers.BooleanField(
        default=False, help_text="Allow it when the domain has a managed save image."
    )


class VirtualMachineExpungeSerializer(VirtualMachineDestroySerializer):
    expunge = None


class VmSnapshotSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    name = serializers.CharField(max_length=128)
    description = serializers.CharField(max_length=1024, required=False, allow_blank=True)
    created_at = serializers.DateTimeField(read_only=True)


# Hosts, primary pools and template copies on pools ----------------------------------------


class HostSerializer(serializers.ModelSerializer):
    """A KVM host as its agent reported it. Hosts are created by agents, not by the API."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    zone = serializers.UUIDField(source="zone.uuid", read_only=True)
    zone_name = serializers.CharField(source="zone.name", read_only=True)
    queue = serializers.CharField(read_only=True, help_text="Celery queue of the host's agent.")
    pools = serializers.SlugRelatedField(
        slug_field="uuid", many=True, read_only=True, help_text="Ids of the pools it reaches."
    )

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "zone",
            "zone_name",
            "address",
            "libvirt_uri",
            "state",
            "last_heartbeat_at",
            "capabilities",
            "queue",
            "pools",
            "unknown_domains",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            # Hosts are staff only (agents_app.api.views.HostViewSet): so is this.
            "unknown_domains": {"help_text": "Running domains no VM knows."}
        }


class PrimaryPoolSerializer(serializers.ModelSerializer):
    """A libvirt storage pool of a zone; its hosts must be in the same zone."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    zone = UuidRelatedField(queryset=Zone.objects.all())
    zone_name = serializers.CharField(source="zone.name", read_only=True)
    pool_type = serializers.ChoiceField(choices=POOL_TYPES, default="dir")
    hosts = UuidRelatedField(queryset=Host.objects.all(), many=True, required=False)
    cache_threshold_percent = serializers.IntegerField(
        min_value=1,
        max_value=100,
        default=80,
        help_text="Above this usage the sweep evicts unpinned cached copies.",
    )

    class Meta:
        model = PrimaryPool
        fields = [
            "id",
            "name",
            "zone",
            "zone_name",
            "libvirt_pool_name",
            "pool_type",
            "path",
            "hosts",
            "capacity_bytes",
            "used_bytes",
            "cache_threshold_percent",
            "created_at",
        ]
        read_only_fields = ["used_bytes", "created_at"]

    def validate_zone(self, zone: Zone) -> Zone:
        # Copies and VM disks on the pool belong to its zone: moving it would orphan them.
        if self.instance is not None and zone.pk != self.instance.zone_id:
            raise serializers.ValidationError("a pool cannot move to another zone")
        return zone

    def validate(self, attrs: dict) -> dict:
        zone = attrs.get("zone") or getattr(self.instance, "zone", None)
        strangers = [host.name for host in attrs.get("hosts", []) if host.zone_id != zone.pk]
        if strangers:
            raise serializers.ValidationError(
                {"hosts": [f"not in zone '{zone}': {', '.join(sorted(strangers))}"]}
            )
        return attrs


class PoolCopySerializer(serializers.ModelSerializer):
    """A template's copy on a primary pool. `pinned` copies are live references."""

    template = serializers.UUIDField(source="template.uuid", read_only=True)
    template_name = serializers.CharField(source="template.name", read_only=True)
    pool = serializers.UUIDField(source="pool.uuid", read_only=True)
    pool_name = serializers.CharField(source="pool.name", read_only=True)
    zone = serializers.UUIDField(source="pool.zone.uuid", read_only=True)

    class Meta:
        model = TemplatePoolRef
        fields = [
            "id",
            "template",
            "template_name",
            "pool",
            "pool_name",
            "zone",
            "state",
            "pinned",
            "download_percent",
            "size",
            "physical_size",
            "install_path",
            "error_text",
            "attempts",
            "last_used_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class PoolCopyPrepareSerializer(serializers.Serializer):
    """CloudStack's prepareTemplate: a template and either pools or a zone (all its pools)."""

    template = UuidRelatedField(queryset=Template.objects.all())
    pools = UuidRelatedField(
        queryset=PrimaryPool.objects.all(), many=True, required=False, allow_empty=False
    )
    zone = UuidRelatedField(queryset=Zone.objects.all(), required=False)

    def validate(self, attrs: dict) -> dict:
        if "pools" in attrs and "zone" in attrs:
            raise serializers.ValidationError({"pools": ["give pools or a zone, not both"]})
        if "pools" not in attrs and "zone" not in attrs:
            raise serializers.ValidationError({"pools": ["give pools or a zone"]})
        zone = attrs.get("zone")
        if zone is not None and not zone.primary_pools.exists():
            raise serializers.ValidationError({"zone": [f"zone '{zone}' has no primary pool"]})
        return attrs


class PoolCopyUnpinSerializer(serializers.Serializer):
    template = UuidRelatedField(queryset=Template.objects.all())
    pool = UuidRelatedField(queryset=PrimaryPool.objects.all())


# VM pools ----------------------------------------------------------------------------------


class VmPoolSerializer(serializers.ModelSerializer):
    """A pool of stateless VMs of a template lineage: a concrete version, or 'latest'."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    template = UuidRelatedField(queryset=Template.objects.all())
    zone = UuidRelatedField(queryset=Zone.objects.all())
    account = serializers.UUIDField(source="account.uuid", read_only=True)
    size = serializers.IntegerField(min_value=1, max_value=100)
    vms = serializers.SlugRelatedField(slug_field="uuid", many=True, read_only=True)
    use_latest_template_version = serializers.BooleanField(
        required=False, default=False, help_text='The same as `"follow": {"channel": "latest"}`.'
    )
    follow = FollowSerializer(
        required=False,
        allow_null=True,
        help_text="The channel of the lineage its VMs follow; null: the version it names.",
    )

    def to_representation(self, pool: VmPool) -> dict:
        data = super().to_representation(pool)
        data["use_latest_template_version"] = pool.use_latest_template_version
        data["follow"] = follow_of(pool)
        return data

    class Meta:
        model = VmPool
        fields = [
            "id",
            "name",
            "template",
            "use_latest_template_version",
            "follow",
            "size",
            "zone",
            "account",
            "vms",
            "created_at",
        ]
        read_only_fields = ["created_at"]


class VmPoolReturnSerializer(serializers.Serializer):
    vm = serializers.UUIDField(help_text="Id of the taken VM to give back.")


class VmVersionRequestSerializer(serializers.Serializer):
    version_name = serializers.CharField(max_length=128, required=False, allow_blank=True)


class QueuedSerializer(serializers.Serializer):
    """The answer of a 202: the host was asked; the result shows up on the object later."""

    status = serializers.CharField(default="queued")


class VmVersionQueuedSerializer(serializers.Serializer):
    """The answer of create-version: the new version's id, deployable once its copy is READY."""

    template = serializers.UUIDField()
    version_number = serializers.IntegerField()
