"""The template endpoints with lineages: the catalogue's viewset plus what versions add."""

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from templates_app.api import views as catalogue_views
from templates_app.api.serializers import TemplateCreateSerializer, TemplateSerializer
from templates_app.choices import TemplateFilter
from templates_app.models import Template

from .. import selectors, services


class TemplateViewSet(catalogue_views.TemplateViewSet):
    """Templates and ISOs. DELETE deactivates; the GC sweep removes the bytes later.

    The listing shows the newest ACTIVE version of each lineage (`?all_versions=true`: all);
    a `version` section on create registers a new version of a base template.
    """

    def get_queryset(self) -> QuerySet[Template]:
        if self.action != "list":
            return super().get_queryset()
        request = self.request
        return selectors.template_list(
            user=request.user,
            template_filter=request.query_params.get("templatefilter", TemplateFilter.EXECUTABLE),
            states=request.query_params.getlist("state"),
            all_versions=catalogue_views.query_flag(request, "all_versions"),
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
