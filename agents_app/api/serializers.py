from rest_framework import serializers

from agents_app.models import VirtualMachine
from templates_app.api.serializers import UuidRelatedField
from templates_app.models import Template, Zone


class VirtualMachineSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    template = serializers.UUIDField(source="template.uuid", read_only=True)
    template_name = serializers.CharField(source="template.name", read_only=True)
    zone = serializers.UUIDField(source="zone.uuid", read_only=True)
    account = serializers.UUIDField(source="account.uuid", read_only=True)
    host = serializers.CharField(source="host.name", default=None, read_only=True)
    pool = serializers.CharField(source="pool.name", default=None, read_only=True)

    class Meta:
        model = VirtualMachine
        fields = [
            "id",
            "name",
            "template",
            "template_name",
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


class VirtualMachineCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=128)
    template = UuidRelatedField(queryset=Template.objects.all())
    zone = UuidRelatedField(queryset=Zone.objects.all())
    deploy = serializers.BooleanField(
        default=False,
        help_text="Place the VM on an Up host of the zone: its agent makes the disk and starts "
        "the domain (answers at once with state STARTING). Without it, a VM record only.",
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
