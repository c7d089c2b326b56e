"""The template endpoints with lineages: the catalogue's viewset plus what versions add."""

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from templates_app.api import views as catalogue_views
from templates_app.api.serializers import TemplateCreateSerializer, TemplateSerializer
from templates_app.choices import TemplateFilter
from templates_app.models import Template

from .. import channels, selectors, services
from .serializers import (
    ChannelCreateSerializer,
    ChannelDetailSerializer,
    ChannelPromoteSerializer,
    ChannelSerializer,
)

CHANNEL_PATH = r"channels/(?P<channel_name>[^/.]+)"
CHANNEL_NAME = OpenApiParameter(
    "channel_name",
    str,
    OpenApiParameter.PATH,
    description="latest, stable, canary or a channel the owner created",
)


class TemplateViewSet(catalogue_views.TemplateViewSet):
    """Templates and ISOs. DELETE deactivates; the GC sweep removes the bytes later.

    The listing shows the newest ACTIVE version of each lineage (`?all_versions=true`: all);
    a `version` section on create registers a new version of a base template.
    """

    def get_queryset(self) -> QuerySet[Template]:
        if self.action != "list" or getattr(self, "swagger_fake_view", False):
            return super().get_queryset()
        request = self.request
        return selectors.template_list(
            user=request.user,
            template_filter=request.query_params.get("templatefilter", TemplateFilter.EXECUTABLE),
            states=request.query_params.getlist("state"),
            all_versions=catalogue_views.query_flag(request, "all_versions"),
            member_of=self.member_of(),
        )

    def register(self, serializer: TemplateCreateSerializer) -> Template:
        version = serializer.validated_data.get("version")
        if version is None:
            return super().register(serializer)
        return services.template_version_create(
            base_template_id=version["base_template"].pk,
            actor=self.request.user,
            version_name=version["version_name"],
            account=serializer.validated_data.get("account"),
            **serializer.registration_fields(),
        )

    @extend_schema(responses=TemplateSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def versions(self, request: Request, id=None) -> Response:
        """The lineage of this template, base (version 1) first, in every state."""
        template = self.get_object()
        rows = list(selectors.template_versions_list(user=request.user, template=template))
        if not any(row.pk == template.lineage_id for row in rows):
            raise NotFound()  # the base is not visible to this user: neither is its lineage
        context = self.get_serializer_context()
        return Response(TemplateSerializer(rows, many=True, context=context).data)

    # Channels: every endpoint is the lineage owner's (or staff's); others get 404. --------------

    def _owned_lineage(self) -> Template:
        """The lineage's base of the template in the URL (any member stands for its lineage)."""
        template = self._owned_template()
        if template.base_id is None:
            return template
        return Template.objects.select_related("account").get(pk=template.base_id)

    def _channel_answer(self, lineage: Template, name: str, code=status.HTTP_200_OK) -> Response:
        row = selectors.channel_seen_by(user=self.request.user, lineage=lineage, name=name)
        if row is None:
            raise NotFound(f"lineage '{lineage}' has no channel '{name}'")
        return Response(ChannelDetailSerializer(row).data, status=code)

    @extend_schema(
        methods=["get"],
        request=None,
        responses=ChannelSerializer(many=True),
        operation_id="template_channels_list",
    )
    @extend_schema(
        methods=["post"],
        request=ChannelCreateSerializer,
        responses={201: ChannelDetailSerializer},
        operation_id="template_channels_create",
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def channels(self, request: Request, id=None) -> Response:
        """The lineage's channels: 'latest' (computed), stable, canary and its own ones.
        POST `{"name": "beta"}` creates a channel pointing at nothing."""
        lineage = self._owned_lineage()
        if request.method == "POST":
            serializer = ChannelCreateSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            channel = channels.channel_create(
                template_id=lineage.pk, name=serializer.validated_data["name"], actor=request.user
            )
            return self._channel_answer(lineage, channel.name, status.HTTP_201_CREATED)
        rows = selectors.channels_seen_by(lineage=lineage)
        return Response(ChannelSerializer(rows, many=True).data)

    @extend_schema(request=None, responses=ChannelDetailSerializer, parameters=[CHANNEL_NAME])
    @action(detail=True, methods=["get"], url_path=CHANNEL_PATH, pagination_class=None)
    def channel(self, request: Request, id=None, channel_name: str = "") -> Response:
        """One channel: where it points, its moves (who, when, from, to), its followers."""
        return self._channel_answer(self._owned_lineage(), channel_name)

    @extend_schema(
        request=ChannelPromoteSerializer,
        responses=ChannelDetailSerializer,
        parameters=[CHANNEL_NAME],
    )
    @action(detail=True, methods=["post"], url_path=f"{CHANNEL_PATH}/promote")
    def promote(self, request: Request, id=None, channel_name: str = "") -> Response:
        """Point the channel at a version (ACTIVE, of this lineage, READY where its followers
        run; else 409 naming what is missing); its followers are rebuilt onto it."""
        lineage = self._owned_lineage()
        serializer = ChannelPromoteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        wanted = serializer.validated_data["version"]
        version = selectors.lineage_of(lineage.pk).filter(uuid=wanted).first()
        if version is None:
            raise ValidationError({"version": [f"no version with id '{wanted}' in this lineage"]})
        channels.channel_promote(
            template_id=lineage.pk, name=channel_name, version_id=version.pk, actor=request.user
        )
        return self._channel_answer(lineage, channel_name)

    @extend_schema(request=None, responses=ChannelDetailSerializer, parameters=[CHANNEL_NAME])
    @action(detail=True, methods=["post"], url_path=f"{CHANNEL_PATH}/rollback")
    def rollback(self, request: Request, id=None, channel_name: str = "") -> Response:
        """Move the channel back to where it pointed before its last move (409 if nowhere)."""
        lineage = self._owned_lineage()
        channels.channel_rollback(template_id=lineage.pk, name=channel_name, actor=request.user)
        return self._channel_answer(lineage, channel_name)
