"""Direct-download certificates: upload (installed by every Up host of the zone), list with
per-host status, revoke (removed from every host). Staff only."""

import django_filters
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from agents_app import certificates
from agents_app.models import DirectDownloadCertificate
from templates_app.api.permissions import IsStaff

from .certificate_serializers import (
    DirectDownloadCertificateSerializer,
    DirectDownloadCertificateUploadSerializer,
)


class DirectDownloadCertificateFilterSet(django_filters.FilterSet):
    zone = django_filters.UUIDFilter(field_name="zone__uuid", help_text="Zone id.")
    alias = django_filters.CharFilter(field_name="alias", help_text="Exact alias.")
    revoked = django_filters.BooleanFilter(method="filter_revoked")

    class Meta:
        model = DirectDownloadCertificate
        fields = ["zone", "alias", "revoked"]

    def filter_revoked(self, queryset, name, value):
        return queryset.filter(revoked_at__isnull=not value)


class DirectDownloadCertificateViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Certificates the hosts of a zone trust for HTTPS direct downloads."""

    serializer_class = DirectDownloadCertificateSerializer
    permission_classes = [IsStaff]
    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    filterset_class = DirectDownloadCertificateFilterSet
    search_fields = ["alias", "subject", "fingerprint_sha256"]
    ordering_fields = ["alias", "not_after", "created_at"]

    def get_queryset(self):
        return certificates.certificates_list()

    def _answer(self, cert, status_code: int) -> Response:
        fresh = self.get_queryset().get(pk=cert.pk)
        return Response(DirectDownloadCertificateSerializer(fresh).data, status=status_code)

    @extend_schema(
        request=DirectDownloadCertificateUploadSerializer,
        responses={201: DirectDownloadCertificateSerializer},
    )
    def create(self, request: Request) -> Response:
        """Store it; every Up host of the zone installs it (hosts start PENDING)."""
        serializer = DirectDownloadCertificateUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        cert = certificates.certificate_upload(
            alias=serializer.validated_data["alias"],
            pem=serializer.validated_data["certificate"],
            zone=serializer.validated_data["zone"],
            actor=request.user,
        )
        return self._answer(cert, status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(DirectDownloadCertificateSerializer, "Revoked; hosts remove it."),
            200: OpenApiResponse(DirectDownloadCertificateSerializer, "Already revoked."),
        },
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, id=None) -> Response:
        """Every host that has it removes it; a repeat changes nothing (200)."""
        cert = self.get_object()
        already = cert.revoked_at is not None
        cert = certificates.certificate_revoke(certificate_id=cert.pk, actor=request.user)
        return self._answer(cert, status.HTTP_200_OK if already else status.HTTP_202_ACCEPTED)
