"""Direct-download certificates: what is shown (with per-host status) and what is uploaded."""

from rest_framework import serializers

from agents_app.certificates import MAX_PEM_CHARS
from agents_app.models import DirectDownloadCertificate, HostCertificate
from templates_app.api.serializers import UuidRelatedField
from templates_app.models import Zone


class HostCertificateSerializer(serializers.ModelSerializer):
    """One host's copy of a certificate, as its agent reported it."""

    host = serializers.CharField(source="host.name", read_only=True)
    host_id = serializers.UUIDField(source="host.uuid", read_only=True)

    class Meta:
        model = HostCertificate
        fields = ["host", "host_id", "state", "error_text", "updated_at"]
        read_only_fields = fields


class DirectDownloadCertificateSerializer(serializers.ModelSerializer):
    """A certificate that the hosts of a zone trust for HTTPS direct downloads."""

    id = serializers.UUIDField(source="uuid", read_only=True)
    zone = serializers.UUIDField(source="zone.uuid", read_only=True)
    zone_name = serializers.CharField(source="zone.name", read_only=True)
    certificate = serializers.CharField(source="pem", read_only=True)
    hosts = HostCertificateSerializer(source="host_certificates", many=True, read_only=True)

    class Meta:
        model = DirectDownloadCertificate
        fields = [
            "id",
            "alias",
            "zone",
            "zone_name",
            "subject",
            "issuer",
            "serial",
            "not_before",
            "not_after",
            "fingerprint_sha256",
            "certificate",
            "revoked_at",
            "created_at",
            "hosts",
        ]
        read_only_fields = fields


class DirectDownloadCertificateUploadSerializer(serializers.Serializer):
    """CloudStack's uploadTemplateDirectDownloadCertificate. The rules live in the service."""

    alias = serializers.CharField(
        max_length=255,
        help_text="1 to 64 of letters, digits, '.', '_', '-'; not 'ca', 'root', 'stencil*', "
        "'cloud*'. Unique among the zone's certificates that are not revoked.",
    )
    certificate = serializers.CharField(
        max_length=MAX_PEM_CHARS,
        trim_whitespace=False,
        help_text="One PEM certificate, currently valid, and nothing else (no private key).",
    )
    zone = UuidRelatedField(queryset=Zone.objects.all())
