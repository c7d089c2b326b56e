"""VM records: create on an ACTIVE template, start/stop, destroy, recover, expunge."""

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from agents_app import selectors, services
from templates_app import selectors as template_selectors

from .serializers import (
    VirtualMachineCreateSerializer,
    VirtualMachineDestroySerializer,
    VirtualMachineExpungeSerializer,
    VirtualMachineSerializer,
    VmSnapshotSerializer,
)


class VirtualMachineViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = VirtualMachineSerializer
    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    filterset_fields = ["state"]

    def get_queryset(self):
        return selectors.vms_visible_to(self.request.user)

    def _answer(self, vm, status_code=status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=vm.pk)
        return Response(VirtualMachineSerializer(fresh).data, status=status_code)

    @extend_schema(
        request=VirtualMachineCreateSerializer, responses={201: VirtualMachineSerializer}
    )
    def create(self, request: Request) -> Response:
        serializer = VirtualMachineCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        template = serializer.validated_data["template"]
        # Another tenant's private template is "unknown", exactly like a wrong id.
        visible = template_selectors.templates_visible_to(request.user)
        if not visible.filter(pk=template.pk).exists():
            return Response(
                {"template": [f"unknown template id '{template.uuid}'"]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        create = services.vm_deploy if serializer.validated_data["deploy"] else services.vm_create
        vm = create(
            name=serializer.validated_data["name"],
            template_id=template.pk,
            zone=serializer.validated_data["zone"],
            account=template_selectors.account_of(request.user),
            actor=request.user,
        )
        return self._answer(vm, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, id=None) -> Response:
        return self._answer(services.vm_start(vm_id=self.get_object().pk, actor=request.user))

    @extend_schema(request=None, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, id=None) -> Response:
        return self._answer(services.vm_stop(vm_id=self.get_object().pk, actor=request.user))

    @extend_schema(request=VirtualMachineDestroySerializer, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"], url_path="destroy", url_name="destroy")
    def destroy_vm(self, request: Request, id=None) -> Response:
        """Destroy (recoverable) or, with expunge, delete for good; 409 listing snapshots."""
        serializer = VirtualMachineDestroySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        vm = services.vm_destroy(
            vm_id=self.get_object().pk, actor=request.user, **serializer.validated_data
        )
        return self._answer(vm)

    @extend_schema(request=None, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"])
    def recover(self, request: Request, id=None) -> Response:
        return self._answer(services.vm_recover(vm_id=self.get_object().pk, actor=request.user))

    @extend_schema(request=VirtualMachineExpungeSerializer, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"])
    def expunge(self, request: Request, id=None) -> Response:
        serializer = VirtualMachineExpungeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        vm = services.vm_expunge(
            vm_id=self.get_object().pk, actor=request.user, **serializer.validated_data
        )
        return self._answer(vm)

    @extend_schema(methods=["GET"], responses=VmSnapshotSerializer(many=True))
    @extend_schema(methods=["POST"], request=VmSnapshotSerializer, responses={202: None})
    @action(detail=True, methods=["get", "post"])
    def snapshots(self, request: Request, id=None) -> Response:
        """List snapshots, or ask the host to take one (202: it appears once libvirt has it)."""
        vm = self.get_object()
        if request.method == "GET":
            return Response(VmSnapshotSerializer(vm.snapshots.all(), many=True).data)
        serializer = VmSnapshotSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.vm_snapshot_create(vm_id=vm.pk, actor=request.user, **serializer.validated_data)
        return Response({"status": "queued"}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: None})
    @action(detail=True, methods=["post"], url_path=r"snapshots/(?P<name>[^/]+)/revert")
    def revert_snapshot(self, request: Request, id=None, name=None) -> Response:
        services.vm_snapshot_revert(vm_id=self.get_object().pk, name=name, actor=request.user)
        return Response({"status": "queued"}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: None})
    @action(detail=True, methods=["delete"], url_path=r"snapshots/(?P<name>[^/]+)")
    def delete_snapshot(self, request: Request, id=None, name=None) -> Response:
        services.vm_snapshot_delete(vm_id=self.get_object().pk, name=name, actor=request.user)
        return Response({"status": "queued"}, status=status.HTTP_202_ACCEPTED)
