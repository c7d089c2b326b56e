"""VM records (create on an ACTIVE template, start/stop, destroy, recover, expunge, snapshots),
hosts (maintenance), primary pools and template copies on pools (prepare, unpin)."""

import django_filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from agents_app import host_services, pool_copies, selectors, services, vm_pools
from agents_app.choices import HostState, PoolCopyState, VmState
from agents_app.followers import vm_version_create
from agents_app.models import Host, PrimaryPool, TemplatePoolRef, VirtualMachine
from templates_app import selectors as template_selectors
from templates_app.api.permissions import IsStaff
from templates_app.copy_status import CopyStatus

from .serializers import (
    HostSerializer,
    PoolCopyPrepareSerializer,
    PoolCopySerializer,
    PoolCopyUnpinSerializer,
    PrimaryPoolSerializer,
    QueuedSerializer,
    VirtualMachineCreateSerializer,
    VirtualMachineDestroySerializer,
    VirtualMachineExpungeSerializer,
    VirtualMachineSerializer,
    VmPoolReturnSerializer,
    VmPoolSerializer,
    VmSnapshotSerializer,
    VmVersionQueuedSerializer,
    VmVersionRequestSerializer,
)

# Filters: related objects are named by their public ids ------------------------------------


class VirtualMachineFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=VmState.choices)
    host = django_filters.UUIDFilter(field_name="host__uuid", help_text="Host id.")
    pool = django_filters.UUIDFilter(field_name="pool__uuid", help_text="Primary pool id.")

    class Meta:
        model = VirtualMachine
        fields = ["state", "host", "pool"]


class HostFilterSet(django_filters.FilterSet):
    zone = django_filters.UUIDFilter(field_name="zone__uuid", help_text="Zone id.")
    state = django_filters.ChoiceFilter(choices=HostState.choices)

    class Meta:
        model = Host
        fields = ["zone", "state"]


class PrimaryPoolFilterSet(django_filters.FilterSet):
    zone = django_filters.UUIDFilter(field_name="zone__uuid", help_text="Zone id.")
    host = django_filters.UUIDFilter(field_name="hosts__uuid", help_text="A host that reaches it.")

    class Meta:
        model = PrimaryPool
        fields = ["zone", "host"]


class PoolCopyFilterSet(django_filters.FilterSet):
    template = django_filters.UUIDFilter(field_name="template__uuid", help_text="Template id.")
    pool = django_filters.UUIDFilter(field_name="pool__uuid", help_text="Primary pool id.")
    state = django_filters.ChoiceFilter(choices=PoolCopyState.choices)
    pinned = django_filters.BooleanFilter()
    status = django_filters.ChoiceFilter(
        choices=CopyStatus.choices,
        method="filter_status",
        help_text="failed: DOWNLOAD_ERROR; in_progress: DOWNLOAD_IN_PROGRESS; stuck: in progress "
        "with an expired lease or no progress for STENCIL_COPY_STUCK_AFTER_SECONDS.",
    )

    class Meta:
        model = TemplatePoolRef
        fields = ["template", "pool", "state", "pinned", "status"]

    def filter_status(self, queryset, name, value):
        return selectors.pool_copies_with_status(queryset, value)


class VirtualMachineViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    serializer_class = VirtualMachineSerializer
    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    filterset_class = VirtualMachineFilterSet

    def get_queryset(self):
        return selectors.vms_visible_to(self.request.user)

    def _answer(self, vm, status_code=status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=vm.pk)
        return Response(
            VirtualMachineSerializer(fresh, context=self.get_serializer_context()).data,
            status=status_code,
        )

    @extend_schema(
        request=VirtualMachineCreateSerializer, responses={201: VirtualMachineSerializer}
    )
    def create(self, request: Request) -> Response:
        serializer = VirtualMachineCreateSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        template = serializer.validated_data["template"]
        create = services.vm_deploy if serializer.validated_data["deploy"] else services.vm_create
        vm = create(
            name=serializer.validated_data["name"],
            template_id=template.pk,
            zone=serializer.validated_data["zone"],
            account=template_selectors.account_of(request.user),
            actor=request.user,
            stateless=serializer.validated_data["stateless"],
            use_latest_template_version=serializer.validated_data["use_latest_template_version"],
            follow_channel=(serializer.validated_data.get("follow") or {}).get("channel", ""),
        )
        # The new VM is the caller's own, with its relations in hand: no second read.
        data = VirtualMachineSerializer(vm, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request: Request, id=None) -> Response:
        return self._answer(services.vm_start(vm_id=self.get_object().pk, actor=request.user))

    @extend_schema(request=VmVersionRequestSerializer, responses={202: VmVersionQueuedSerializer})
    @action(detail=True, methods=["post"], url_path="create-version")
    def create_version(self, request: Request, id=None) -> Response:
        """oVirt's "new template version from this VM": the VM must be stopped; its host copies
        the disk into an image store, and the version is deployable once that copy is READY."""
        serializer = VmVersionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = vm_version_create(
            vm_id=self.get_object().pk, actor=request.user, **serializer.validated_data
        )
        return Response(
            {"template": str(version.uuid), "version_number": version.version_number},
            status=status.HTTP_202_ACCEPTED,
        )

    @extend_schema(request=None, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"])
    def reboot(self, request: Request, id=None) -> Response:
        return self._answer(services.vm_reboot(vm_id=self.get_object().pk, actor=request.user))

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
    @extend_schema(
        methods=["POST"], request=VmSnapshotSerializer, responses={202: QueuedSerializer}
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def snapshots(self, request: Request, id=None) -> Response:
        """List snapshots, or ask the host to take one (202: it appears once libvirt has it)."""
        vm = self.get_object()
        if request.method == "GET":
            return Response(VmSnapshotSerializer(vm.snapshots.all(), many=True).data)
        serializer = VmSnapshotSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.vm_snapshot_create(vm_id=vm.pk, actor=request.user, **serializer.validated_data)
        return Response({"status": "queued"}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: QueuedSerializer})
    @action(detail=True, methods=["post"], url_path=r"snapshots/(?P<name>[^/]+)/revert")
    def revert_snapshot(self, request: Request, id=None, name=None) -> Response:
        services.vm_snapshot_revert(vm_id=self.get_object().pk, name=name, actor=request.user)
        return Response({"status": "queued"}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: QueuedSerializer})
    @action(detail=True, methods=["delete"], url_path=r"snapshots/(?P<name>[^/]+)")
    def delete_snapshot(self, request: Request, id=None, name=None) -> Response:
        services.vm_snapshot_delete(vm_id=self.get_object().pk, name=name, actor=request.user)
        return Response({"status": "queued"}, status=status.HTTP_202_ACCEPTED)


class HostViewSet(viewsets.ReadOnlyModelViewSet):
    """KVM hosts, as their agents registered them; staff put them in and out of maintenance."""

    serializer_class = HostSerializer
    permission_classes = [IsStaff]  # addresses, libvirt URIs, queues: infrastructure
    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    filterset_class = HostFilterSet
    search_fields = ["name", "address"]

    def get_queryset(self):
        return selectors.hosts_list()

    def _answer(self, host) -> Response:
        fresh = self.get_queryset().get(pk=host.pk)
        return Response(HostSerializer(fresh, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses=HostSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsStaff])
    def maintenance(self, request: Request, id=None) -> Response:
        """No new deploys or pool copies on it; heartbeats no longer bring it Up."""
        host = self.get_object()
        return self._answer(
            host_services.host_enter_maintenance(host_id=host.pk, actor=request.user)
        )

    @extend_schema(request=None, responses=HostSerializer)
    @action(
        detail=True,
        methods=["post"],
        permission_classes=[IsStaff],
        url_path="maintenance-off",
        url_name="maintenance-off",
    )
    def maintenance_off(self, request: Request, id=None) -> Response:
        """DISCONNECTED until the agent's next heartbeat brings it Up."""
        host = self.get_object()
        return self._answer(
            host_services.host_leave_maintenance(host_id=host.pk, actor=request.user)
        )


class PrimaryPoolViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """Primary storage: libvirt pools of a zone (type dir) and the hosts that reach them."""

    serializer_class = PrimaryPoolSerializer
    permission_classes = [IsStaff]  # paths and hosts: infrastructure
    lookup_field = "uuid"
    lookup_url_kwarg = "id"
    filterset_class = PrimaryPoolFilterSet
    search_fields = ["name", "libvirt_pool_name", "path"]

    def get_queryset(self):
        return selectors.primary_pools_list()


class PoolCopyViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Template copies on primary pools (staff: they name pools and paths)."""

    serializer_class = PoolCopySerializer
    permission_classes = [IsStaff]
    filterset_class = PoolCopyFilterSet
    ordering_fields = ["last_used_at", "updated_at", "created_at"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return TemplatePoolRef.objects.none()  # schema generation: no user to filter by
        return selectors.pool_copies_visible_to(self.request.user)

    def _copies(self, refs: list[TemplatePoolRef]) -> list[dict]:
        fresh = self.get_queryset().filter(pk__in=[ref.pk for ref in refs]).order_by("pk")
        return PoolCopySerializer(fresh, many=True).data

    @extend_schema(
        request=PoolCopyPrepareSerializer, responses={202: PoolCopySerializer(many=True)}
    )
    @action(detail=False, methods=["post"], permission_classes=[IsStaff])
    def prepare(self, request: Request) -> Response:
        """Pin the template on the pools (or every pool of the zone) and copy it now (202)."""
        serializer = PoolCopyPrepareSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        pools, zone = data.get("pools"), data.get("zone")
        refs = pool_copies.template_prepare(
            template_id=data["template"].pk,
            pool_ids=None if pools is None else [pool.pk for pool in pools],
            zone_id=None if zone is None else zone.pk,
            actor=request.user,
        )
        return Response(self._copies(refs), status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=PoolCopyUnpinSerializer, responses=PoolCopySerializer)
    @action(detail=False, methods=["post"], permission_classes=[IsStaff])
    def unpin(self, request: Request) -> Response:
        """The copy stops being a live reference; the sweep may evict it once unused."""
        serializer = PoolCopyUnpinSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        template, pool = serializer.validated_data["template"], serializer.validated_data["pool"]
        if selectors.pool_copy_of(template_id=template.pk, pool_id=pool.pk) is None:
            raise ValidationError({"pool": [f"template '{template}' has no copy on pool '{pool}'"]})
        ref = pool_copies.pool_copy_set_pinned(
            template_id=template.pk, pool_id=pool.pk, pinned=False, actor=request.user
        )
        return Response(self._copies([ref])[0])

    @extend_schema(request=None, responses={202: PoolCopySerializer})
    @action(detail=True, methods=["post"], permission_classes=[IsStaff])
    def retry(self, request: Request, pk=None) -> Response:
        """Retry a DOWNLOAD_ERROR copy on an Up host of its pool (202); otherwise 409."""
        ref = pool_copies.pool_copy_retry(ref_id=self.get_object().pk, actor=request.user)
        return Response(self._copies([ref])[0], status=status.HTTP_202_ACCEPTED)


class VmPoolViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """VM pools: create (deploys the stateless VMs), take a VM, return it."""

    serializer_class = VmPoolSerializer
    lookup_field = "uuid"
    lookup_url_kwarg = "id"

    def get_queryset(self):
        return selectors.vm_pools_visible_to(self.request.user).prefetch_related("vms")

    def create(self, request: Request) -> Response:
        serializer = VmPoolSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        template = data["template"]
        visible = template_selectors.templates_visible_to(request.user)
        if not visible.filter(pk=template.pk).exists():
            return Response(
                {"template": [f"unknown template id '{template.uuid}'"]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        pool = vm_pools.vm_pool_create(
            name=data["name"],
            template_id=template.pk,
            zone=data["zone"],
            account=template_selectors.account_of(request.user),
            size=data["size"],
            actor=request.user,
            use_latest_template_version=data.get("use_latest_template_version", False),
            follow_channel=(data.get("follow") or {}).get("channel", ""),
        )
        fresh = self.get_queryset().get(pk=pool.pk)
        return Response(VmPoolSerializer(fresh).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"])
    def take(self, request: Request, id=None) -> Response:
        """Take a free VM of the pool (it starts); 409 when none is free."""
        vm = vm_pools.vm_pool_take(pool_id=self.get_object().pk, user=request.user)
        fresh = selectors.vms_visible_to(request.user).get(pk=vm.pk)
        return Response(VirtualMachineSerializer(fresh, context=self.get_serializer_context()).data)

    @extend_schema(request=VmPoolReturnSerializer, responses=VirtualMachineSerializer)
    @action(detail=True, methods=["post"], url_path="return", url_name="return")
    def return_vm(self, request: Request, id=None) -> Response:
        """Give a taken VM back: it stops, its disk changes are discarded."""
        serializer = VmPoolReturnSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        pool = self.get_object()
        vm = pool.vms.filter(uuid=serializer.validated_data["vm"]).first()
        if vm is None:
            raise ValidationError({"vm": ["not a VM of this pool"]})
        vm = vm_pools.vm_pool_return(vm_id=vm.pk, user=request.user)
        fresh = selectors.vms_visible_to(request.user).get(pk=vm.pk)
        return Response(VirtualMachineSerializer(fresh, context=self.get_serializer_context()).data)
