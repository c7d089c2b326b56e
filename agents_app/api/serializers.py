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

    class Meta:
        model = VirtualMachine
        fields = [
            "id",
            "name",
            "template",
            "template_name",
            "zone",
            "account",
            "state",
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


class VirtualMachineDestroySerializer(serializers.Serializer):
    expunge = serializers.BooleanField(default=False)
