"""Copies on image stores, for operators (staff only: they show infrastructure): the list with
a `status` filter (failed, in progress, stuck) and "Retry download" of a failed one (202)."""

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from templates_app import selectors
from templates_app.choices import DownloadState, StoreRefState
from templates_app.copies import store_copy_retry
from templates_app.copy_status import CopyStatus
from templates_app.models import TemplateStoreRef

from .permissions import IsStaff
from .serializers import StoreCopySerializer


class StoreCopyFilterSet(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=CopyStatus.choices,
        method="filter_status",
        help_text="failed: DOWNLOAD_ERROR, ABANDONED or UPLOAD_ERROR; in_progress: a download "
        "or upload running; stuck: in progress with an expired lease or no progress for "
        "STENCIL_COPY_STUCK_AFTER_SECONDS.",
    )
    template = django_filters.UUIDFilter(field_name="template__uuid", help_text="Template id.")
    store = django_filters.UUIDFilter(field_name="store__uuid", help_text="Image store id.")
    download_state = django_filters.ChoiceFilter(choices=DownloadState.choices)
    state = django_filters.ChoiceFilter(choices=StoreRefState.choices)

    class Meta:
        model = TemplateStoreRef
        fields = ["status", "template", "store", "download_state", "state"]

    def filter_status(self, queryset, name, value):
        return selectors.store_copies_with_status(queryset, value)


class StoreCopyListSerializer(StoreCopySerializer):
    """One copy: what it is a copy of, where, how far it got, and why it failed (the
    template page's copy, plus its template, attempts and lease; staff see every field)."""

    template = serializers.UUIDField(source="template.uuid", read_only=True)
    template_name = serializers.CharField(source="template.name", read_only=True)

    class Meta(StoreCopySerializer.Meta):
        fields = [
            "id",
            "template",
            "template_name",
            *StoreCopySerializer.Meta.fields,
            "attempts",
            "lease_expires_at",
            "created_at",
        ]
        read_only_fields = fields


class StoreCopyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Template copies on image stores (staff). `id` is the copy's number (it has no UUID)."""

    serializer_class = StoreCopyListSerializer
    permission_classes = [IsStaff]
    filterset_class = StoreCopyFilterSet
    ordering_fields = ["updated_at", "created_at", "attempts"]

    def get_queryset(self):
        return selectors.store_copies_list()

    @extend_schema(request=None, responses={202: StoreCopyListSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk=None) -> Response:
        """Retry a DOWNLOAD_ERROR or ABANDONED copy of an ACTIVE template: NOT_DOWNLOADED now, a
        storage worker downloads it (202). Any other state: 409 naming it."""
        ref = store_copy_retry(ref_id=self.get_object().pk, actor=request.user)
        fresh = self.get_queryset().get(pk=ref.pk)
        data = StoreCopyListSerializer(fresh, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_202_ACCEPTED)
