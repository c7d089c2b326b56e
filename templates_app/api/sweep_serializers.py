"""API shapes of the GC sweep: the request, a sweep's result, and a queued run."""

from rest_framework import serializers

from templates_app.models import GcSweepRun


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


class GcSweepRunSerializer(serializers.ModelSerializer):
    """A queued sweep: poll `url` until `state` is DONE (see `result`) or FAILED (`error`)."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    url = serializers.HyperlinkedIdentityField(
        view_name="gc-sweep-run-detail", lookup_field="uuid", lookup_url_kwarg="id"
    )
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    template_count = serializers.SerializerMethodField(
        help_text="How many templates the sweep was limited to; null: every INACTIVE template."
    )
    result = GcSweepResultSerializer(
        read_only=True, allow_null=True, help_text="The sweep's report once DONE; else null."
    )
    error = serializers.CharField(
        source="error_text", read_only=True, help_text="Why the run FAILED; else empty."
    )

    class Meta:
        model = GcSweepRun
        fields = [
            "id",
            "url",
            "state",
            "requested_by",
            "template_count",
            "result",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_template_count(self, run: GcSweepRun) -> int | None:
        return None if run.template_ids is None else len(run.template_ids)
