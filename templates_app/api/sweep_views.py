"""The GC sweep over REST: a dry run answers at once; a real sweep is queued and polled."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from templates_app import services, sweeps

from .permissions import IsStaff
from .sweep_serializers import (
    GcSweepRequestSerializer,
    GcSweepResultSerializer,
    GcSweepRunSerializer,
)


class GcSweepView(APIView):
    """Staff: queue a GC sweep (202, poll the run), or with `dry_run` list what would go (200)."""

    permission_classes = [IsStaff]

    @extend_schema(
        request=GcSweepRequestSerializer,
        responses={
            200: OpenApiResponse(GcSweepResultSerializer, description="dry run: the report"),
            202: OpenApiResponse(GcSweepRunSerializer, description="queued: poll `url`"),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = GcSweepRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if serializer.validated_data["dry_run"]:
            return Response(services.gc_sweep(dry_run=True, actor=request.user).as_dict())
        run = sweeps.gc_sweep_request(actor=request.user)
        data = GcSweepRunSerializer(run, context={"request": request}).data
        return Response(
            data, status=status.HTTP_202_ACCEPTED, headers={"Location": str(data["url"])}
        )


class GcSweepRunViewSet(viewsets.ReadOnlyModelViewSet):
    """Staff: queued GC sweeps, newest first: state, result or error, and when."""

    serializer_class = GcSweepRunSerializer
    permission_classes = [IsStaff]
    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    filterset_fields = ["state"]
    ordering_fields = ["created_at"]
    ordering = ["-created_at", "-id"]

    def get_queryset(self):
        return sweeps.gc_sweep_runs_list()
