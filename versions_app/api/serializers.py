"""Channels of a lineage, as the API shows them."""

from rest_framework import serializers

from templates_app.models import Event, Template


class ChannelVersionSerializer(serializers.ModelSerializer):
    """The version a channel points at (or pointed at before)."""

    id = serializers.UUIDField(source="uuid", read_only=True)

    class Meta:
        model = Template
        fields = ["id", "version_number", "version_name", "state"]
        read_only_fields = fields


class ChannelSerializer(serializers.Serializer):
    name = serializers.CharField(read_only=True)
    built_in = serializers.BooleanField(read_only=True)
    computed = serializers.BooleanField(
        read_only=True,
        help_text="'latest': the newest ACTIVE version, computed per account; never moved.",
    )
    version = ChannelVersionSerializer(read_only=True, allow_null=True)
    previous_version = ChannelVersionSerializer(
        read_only=True, allow_null=True, help_text="Where a rollback takes it."
    )
    moved_at = serializers.DateTimeField(read_only=True, allow_null=True)


class ChannelMoveSerializer(serializers.ModelSerializer):
    """One move of a channel: who, when, from and to (version numbers; '' is nothing)."""

    actor = serializers.CharField(source="actor_label", read_only=True)
    from_version = serializers.CharField(source="from_state", read_only=True)
    to_version = serializers.CharField(source="to_state", read_only=True)

    class Meta:
        model = Event
        fields = ["actor", "created_at", "from_version", "to_version", "reason"]
        read_only_fields = fields


class FollowerSerializer(serializers.Serializer):
    kind = serializers.CharField()
    id = serializers.UUIDField()
    name = serializers.CharField()
    zone = serializers.CharField()
    state = serializers.CharField()
    moves_now = serializers.BooleanField(
        help_text="Rebuilt at once when the channel moves (stopped); else when it next stops."
    )


class ChannelDetailSerializer(ChannelSerializer):
    history = ChannelMoveSerializer(many=True, read_only=True)
    followers = FollowerSerializer(
        many=True, read_only=True, help_text="All for staff; your accounts' for others."
    )


class ChannelCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64, help_text="^[a-z][a-z0-9-]{0,31}$")


class ChannelPromoteSerializer(serializers.Serializer):
    version = serializers.UUIDField(help_text="Id of an ACTIVE version of this lineage.")
