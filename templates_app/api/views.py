"""REST endpoints of the catalogue. Declarative: one action per service call."""

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from templates_app import deletes, extracts, launch_permissions, selectors, services, uploads
from templates_app.choices import TemplateFilter
from templates_app.filtersets import EventFilterSet, TemplateFilterSet
from templates_app.models import Template
from templates_app.references import references_seen_by

from .pagination import TemplateListPagination
from .permissions import IsStaff, IsStaffOrReadOnly
from .serializers import (
    AccountSerializer,
    EventSerializer,
    ImageStoreSerializer,
    ReferencesSerializer,
    TemplateCopySerializer,
    TemplateCreateSerializer,
    TemplateDeleteResultSerializer,
    TemplateDetailViewSerializer,
    TemplateExtractRequestSerializer,
    TemplateExtractSerializer,
    TemplatePermissionsSerializer,
    TemplatePermissionsViewSerializer,
    TemplateSerializer,
    TemplateUpdateSerializer,
    UploadParamsRequestSerializer,
    UploadParamsSerializer,
    ZoneSerializer,
)


def query_flag(request: Request, name: str) -> bool:
    """A boolean query parameter read as django-filter's BooleanWidget reads it."""
    return request.query_params.get(name, "").lower() in ("true", "1")


class TemplateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Templates and ISOs. DELETE deactivates; the GC sweep removes the bytes later.

    versions_app.api.views extends it with lineages (the listing's newest-per-lineage rule,
    new versions, `versions/`); project/api_urls.py serves that one.
    """

    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    pagination_class = TemplateListPagination
    filterset_class = TemplateFilterSet
    search_fields = ["name", "display_text"]
    ordering_fields = ["name", "created_at", "updated_at", "format", "kind"]
    ordering = ["-created_at", "-id"]

    def get_queryset(self) -> QuerySet[Template]:
        if getattr(self, "swagger_fake_view", False):
            return Template.objects.none()  # the schema generator: no user, only the model
        user = self.request.user
        if self.action == "list":
            return selectors.template_list(
                user=user,
                template_filter=self.request.query_params.get(
                    "templatefilter", TemplateFilter.EXECUTABLE
                ),
                states=self.request.query_params.getlist("state"),
                member_of=self.member_of(),
            )
        return selectors.template_detail_queryset(user=user)

    def member_of(self) -> list[int]:
        """The caller's account ids, read once per request: the listing's visibility rule
        and the serializer's secrets rule both use them."""
        if not hasattr(self, "_member_of"):
            self._member_of = selectors.account_ids_of(self.request.user)
        return self._member_of

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        if self.action == "list" and not getattr(self, "swagger_fake_view", False):
            context["member_of"] = set(self.member_of())
        return context

    def get_serializer_class(self):
        return TemplateSerializer if self.action == "list" else TemplateDetailViewSerializer

    def list(self, request: Request, *args, **kwargs) -> Response:
        """A page of templates as plain rows (the hot path): its statement compiled once per
        caller and filters (templates_app.statements), zones and details in two fixed
        statements, no model per row."""
        serializer = self.get_serializer()
        rows = self.paginator.paginate_listing(
            request,
            build=lambda: self.filter_queryset(self.get_queryset()).prefetch_related(None),
            # With the paginator's own (path, user, filters): all the statement depends on.
            key=(type(self).__qualname__, tuple(self.member_of())),
            columns=serializer.LISTED_COLUMNS,
        )
        zones, details = selectors.listing_relations([row["pk"] for row in rows])
        data = [
            serializer.listed_representation(row, zones[row["pk"]], details[row["pk"]])
            for row in rows
        ]
        return self.get_paginated_response(data)

    def _owned_template(self) -> Template:
        """Writes belong to the owning account or staff; others get 404, not a hint."""
        template = self.get_object()
        if not selectors.may_change_template(self.request.user, template):
            raise NotFound()
        return template

    def _detail(self, template_id: int) -> dict:
        fresh = self.get_queryset().get(pk=template_id)
        return TemplateDetailViewSerializer(fresh, context=self.get_serializer_context()).data

    @extend_schema(request=TemplateCreateSerializer, responses={201: TemplateDetailViewSerializer})
    def create(self, request: Request) -> Response:
        """Register a template, or with a `version` section a new version of a base template."""
        serializer = TemplateCreateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        template = self.register(serializer)
        return Response(self._detail(template.pk), status=status.HTTP_201_CREATED)

    def register(self, serializer: TemplateCreateSerializer) -> Template:
        account = serializer.validated_data.get("account")
        return services.template_register(
            account=account or selectors.account_of(self.request.user),
            actor=self.request.user,
            **serializer.registration_fields(),
        )

    @extend_schema(request=UploadParamsRequestSerializer, responses={201: UploadParamsSerializer})
    @action(detail=False, methods=["post"], url_path="upload-params")
    def upload_params(self, request: Request) -> Response:
        """Persist the template, charge limits, and return a signed URL to POST the bytes to."""
        serializer = UploadParamsRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        params = uploads.template_upload_params(
            account=selectors.account_of(request.user),
            actor=request.user,
            image_format=data.pop("format"),
            base_url=request.build_absolute_uri("/"),
            **data,
        )
        return Response(params.as_dict(), status=status.HTTP_201_CREATED)

    @extend_schema(request=TemplateUpdateSerializer, responses=TemplateDetailViewSerializer)
    def partial_update(self, request: Request, id=None) -> Response:
        template = self._owned_template()
        serializer = TemplateUpdateSerializer(
            data=request.data, partial=True, context={"request": request, "template": template}
        )
        serializer.is_valid(raise_exception=True)
        services.template_update(
            template_id=template.pk, actor=request.user, changes=serializer.changes()
        )
        return Response(self._detail(template.pk))

    @extend_schema(responses={200: TemplateDeleteResultSerializer})
    def destroy(self, request: Request, id=None) -> Response:
        template = self._owned_template()
        services.template_deactivate(template_id=template.pk, actor=request.user)
        detail = self._detail(template.pk)
        return Response({"template": detail, "references": detail["references"]})

    @extend_schema(request=TemplateCopySerializer, responses={202: TemplateDetailViewSerializer})
    @action(detail=True, methods=["post"])
    def copy(self, request: Request, id=None) -> Response:
        """CloudStack's copyTemplate: the template gains `zones`, whose stores download it
        (watch `copies`); owner or staff."""
        template = self._owned_template()
        serializer = TemplateCopySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.template_zones_add(
            template_id=template.pk, zones=serializer.validated_data["zones"], actor=request.user
        )
        return Response(self._detail(template.pk), status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=TemplateExtractRequestSerializer,
        responses={200: TemplateExtractSerializer, 202: TemplateExtractSerializer},
    )
    @action(detail=True, methods=["post"])
    def extract(self, request: Request, id=None) -> Response:
        """CloudStack's extractTemplate: a signed, time-limited URL to download the template
        from an image store (200). A template with no READY store copy yet (direct download)
        is first copied into a store: 202 with the copy's progress; POST again for the URL.
        Owner or staff."""
        template = self._owned_template()
        serializer = TemplateExtractRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        extract = extracts.template_extract(
            template_id=template.pk,
            actor=request.user,
            zone=serializer.validated_data.get("zone"),
            base_url=request.build_absolute_uri("/"),
        )
        code = status.HTTP_200_OK if extract.ready else status.HTTP_202_ACCEPTED
        return Response(extract.as_dict(), status=code)

    @extend_schema(request=None, responses=TemplateDetailViewSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsStaff])
    def reactivate(self, request: Request, id=None) -> Response:
        template = self.get_object()
        services.template_reactivate(template_id=template.pk, actor=request.user)
        return Response(self._detail(template.pk))

    @extend_schema(
        request=TemplatePermissionsSerializer, responses=TemplatePermissionsViewSerializer
    )
    @action(detail=True, methods=["get", "post"])
    def permissions(self, request: Request, id=None) -> Response:
        """Launch permissions: the accounts this template is shared with (owner or staff).
        POST `{"op": "add"|"remove"|"reset", "accounts": [ids]}` changes them."""
        template = self._owned_template()
        if request.method == "POST":
            serializer = TemplatePermissionsSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            template = launch_permissions.template_permissions_update(
                template_id=template.pk, actor=request.user, **serializer.validated_data
            )
        accounts = [str(a.uuid) for a in template.shared_with.order_by("name")]
        return Response({"template": str(template.uuid), "accounts": accounts})

    @extend_schema(responses=ReferencesSerializer)
    @action(detail=True, methods=["get"], pagination_class=None)
    def references(self, request: Request, id=None) -> Response:
        """Live references per kind; the holders are listed to staff, and to other users only
        those of their own account (another account's VMs stay hidden)."""
        template = self.get_object()
        return Response(ReferencesSerializer(references_seen_by(request.user, template)).data)


class ZoneViewSet(viewsets.ModelViewSet):
    serializer_class = ZoneSerializer
    permission_classes = [IsStaffOrReadOnly]
    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    filterset_fields = ["name"]

    def get_queryset(self):
        return selectors.zones_list()

    def perform_destroy(self, instance) -> None:
        deletes.zone_delete(zone_id=instance.pk)


class ImageStoreViewSet(viewsets.ModelViewSet):
    """Secondary storage (staff: paths and capacity are infrastructure)."""

    serializer_class = ImageStoreSerializer
    permission_classes = [IsStaff]
    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    filterset_fields = ["state"]

    def get_queryset(self):
        return selectors.image_stores_list()

    def perform_destroy(self, instance) -> None:
        deletes.image_store_delete(store_id=instance.pk)


class AccountViewSet(viewsets.ModelViewSet):
    serializer_class = AccountSerializer
    permission_classes = [IsStaff]
    lookup_field = "uuid"
    lookup_url_kwarg = "id"

    def get_queryset(self):
        return selectors.accounts_list()

    def perform_destroy(self, instance) -> None:
        deletes.account_delete(account_id=instance.pk)


class EventViewSet(viewsets.ReadOnlyModelViewSet):
    """State changes: what, from, to, who, why, when. Users see their account's."""

    serializer_class = EventSerializer
    filterset_class = EventFilterSet

    def get_queryset(self):
        return selectors.events_visible_to(self.request.user)
