"""Admin of hosts, primary pools, template copies on pools, VMs and their snapshots.

States move only through services: actions call them, exactly as the API does. Hosts, copies
and snapshots are written by agents, so their pages are read-only.
"""

from collections import Counter

from django import forms
from django.contrib import admin
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html
from unfold.admin import ModelAdmin

from templates_app.admin import (
    ReadOnlyAdmin,
    ReadOnlyTabularInline,
    RetryDownloadMixin,
    ServiceRefusalMixin,
    ServiceRefused,
    call_for_each,
    copy_status_filter,
    human_size,
    progress_bar,
    when_column,
)
from templates_app.admin_actions import ObjectActionsMixin, confirm_bulk_action
from templates_app.admin_forms import ServiceErrorFormMixin, TemplateVersionChoiceField
from templates_app.errors import InvalidInput, StencilError, TemplateNotUsable
from versions_app.channels import checked_channel_name
from versions_app.selectors import channel_is_known

from . import host_services, pool_copies, selectors, services, vm_pools
from .admin_deploy import DeployPageMixin
from .certificates import certificate_revoke
from .impacts import vm_destroy_impact
from .models import (
    DirectDownloadCertificate,
    Host,
    HostCertificate,
    PrimaryPool,
    TemplatePoolRef,
    VirtualMachine,
    VmPool,
    VmSnapshot,
)
from .object_actions import register_object_actions
from .progress import POOL_IN_FLIGHT, vms_progress


class ActionsOnlyAdmin(ModelAdmin):
    """Rows written by agents or services: listed and shown, changed only by the list's actions."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # The list's actions need the change permission; an object's own page stays read-only
        # because nothing on it is edited by hand.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False


register_object_actions()


# Hosts and pools ---------------------------------------------------------------------------


@admin.register(Host)
class HostAdmin(ObjectActionsMixin, ActionsOnlyAdmin):
    """KVM hosts, registered by their agents. Maintenance on/off are actions calling services
    (on the list, and buttons on the host's page)."""

    change_form_template = "admin/stencil/change_form.html"

    list_display = ("name", "zone", "state", "heartbeat", "libvirt_uri", "pool_names", "vm_count")
    heartbeat = when_column("last_heartbeat_at", "Last heartbeat")
    list_filter = ("state", "zone")
    list_select_related = ("zone",)
    search_fields = ("name", "address", "libvirt_uri", "uuid")
    fields = (
        "name",
        "state",
        "zone",
        "address",
        "libvirt_uri",
        "queue",
        "last_heartbeat_at",
        "pool_names",
        "capabilities",
        "unknown_domains",
        "uuid",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    actions = ("enter_maintenance_selected", "leave_maintenance_selected")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .prefetch_related("pools")
            .annotate(vms_on_host=Count("vms", distinct=True))
        )

    @admin.display(description="VMs", ordering="vms_on_host")
    def vm_count(self, host: Host) -> str:
        url = reverse("admin:agents_app_virtualmachine_changelist")
        return format_html('<a href="{}?host__id__exact={}">{}</a>', url, host.pk, host.vms_on_host)

    @admin.display(description="Pools")
    def pool_names(self, host: Host) -> str:
        return ", ".join(sorted(pool.name for pool in host.pools.all())) or "—"

    @admin.display(description="Queue")
    def queue(self, host: Host) -> str:
        return host.queue

    def _each(self, request, queryset, service, done: str) -> None:
        ids = queryset.order_by("pk").values_list("pk", flat=True)
        call_for_each(self, request, ids, lambda pk: service(host_id=pk, actor=request.user), done)

    @admin.action(description="Enter maintenance", permissions=["change"])
    def enter_maintenance_selected(self, request, queryset):
        self._each(request, queryset, host_services.host_enter_maintenance, "In maintenance")

    @admin.action(description="Leave maintenance", permissions=["change"])
    def leave_maintenance_selected(self, request, queryset):
        self._each(request, queryset, host_services.host_leave_maintenance, "Out of maintenance")


class PrimaryPoolForm(forms.ModelForm):
    """The rules the API applies too: type dir, threshold 1..100, hosts of the pool's zone."""

    pool_type = forms.ChoiceField(choices=[("dir", "Directory")], initial="dir")
    cache_threshold_percent = forms.IntegerField(min_value=1, max_value=100, initial=80)

    class Meta:
        model = PrimaryPool
        fields = (
            "name",
            "zone",
            "libvirt_pool_name",
            "pool_type",
            "path",
            "hosts",
            "capacity_bytes",
            "cache_threshold_percent",
        )

    def clean_zone(self):
        zone = self.cleaned_data["zone"]
        # Copies and VM disks on the pool belong to its zone: moving it would orphan them.
        if self.instance.pk is not None and zone.pk != self.instance.zone_id:
            raise forms.ValidationError("A pool cannot move to another zone.")
        return zone

    def clean(self):
        cleaned = super().clean()
        zone = cleaned.get("zone")
        strangers = [h.name for h in cleaned.get("hosts") or [] if zone and h.zone_id != zone.pk]
        if strangers:
            self.add_error("hosts", f"Not in zone “{zone}”: {', '.join(sorted(strangers))}.")
        return cleaned


@admin.register(PrimaryPool)
class PrimaryPoolAdmin(ModelAdmin):
    """Primary storage: configuration, like image stores. Usage is counted, not typed in."""

    form = PrimaryPoolForm
    list_display = (
        "name",
        "zone",
        "pool_type",
        "path",
        "capacity",
        "used",
        "threshold",
        "copies",
        "vm_count",
    )
    list_filter = ("zone",)
    list_select_related = ("zone",)
    search_fields = ("name", "libvirt_pool_name", "path")
    filter_horizontal = ("hosts",)
    readonly_fields = ("uuid", "used_bytes", "created_at")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                copy_count=Count("template_refs", distinct=True),
                vms_on_pool=Count("vms", distinct=True),
            )
        )

    @admin.display(description="Pool copies", ordering="copy_count")
    def copies(self, pool: PrimaryPool) -> str:
        url = reverse("admin:agents_app_templatepoolref_changelist")
        return format_html('<a href="{}?pool__id__exact={}">{}</a>', url, pool.pk, pool.copy_count)

    @admin.display(description="VMs", ordering="vms_on_pool")
    def vm_count(self, pool: PrimaryPool) -> int:
        return pool.vms_on_pool

    def has_delete_permission(self, request, obj=None):
        # Copies and VMs hold the pool (PROTECT); there is no decommission service yet.
        return False

    @admin.display(description="Capacity", ordering="capacity_bytes")
    def capacity(self, pool: PrimaryPool) -> str:
        return "unknown" if pool.capacity_bytes is None else human_size(pool.capacity_bytes)

    @admin.display(description="Used", ordering="used_bytes")
    def used(self, pool: PrimaryPool) -> str:
        return human_size(pool.used_bytes)

    @admin.display(description="Cache threshold", ordering="cache_threshold_percent")
    def threshold(self, pool: PrimaryPool) -> str:
        return f"{pool.cache_threshold_percent}%"


@admin.register(TemplatePoolRef)
class TemplatePoolRefAdmin(ObjectActionsMixin, RetryDownloadMixin, ActionsOnlyAdmin):
    """Template copies on primary pools, with copy progress. Pinned copies are live references.
    A failed copy can be retried on an Up host of its pool (list action, button on its page)."""

    retry_service = staticmethod(pool_copies.pool_copy_retry)
    retry_transition = "retry_copy"
    change_list_template = "admin/stencil/change_list.html"

    list_display = (
        "template",
        "pool",
        "state",
        "pinned",
        "progress",
        "virtual_size",
        "physical",
        "attempts",
        "last_used_when",
    )
    last_used_when = when_column("last_used_at", "Last used")
    list_filter = (
        copy_status_filter(selectors.pool_copies_with_status),
        "state",
        "pinned",
        "pool",
    )
    list_select_related = ("template", "pool")
    search_fields = ("template__name", "pool__name", "install_path", "error_text")
    fields = (
        "template",
        "pool",
        "state",
        "pinned",
        "progress",
        "virtual_size",
        "physical",
        "volume_name",
        "install_path",
        "error_text",
        "attempts",
        "last_used_at",
        "marked_for_eviction_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    actions = ("pin_selected", "unpin_selected", "retry_selected")

    @admin.display(description="Progress", ordering="download_percent")
    def progress(self, ref: TemplatePoolRef) -> str:
        active = ref.state in POOL_IN_FLIGHT
        return progress_bar(ref.download_percent, f"pool:{ref.pk}", active)

    @admin.display(description="Size", ordering="size")
    def virtual_size(self, ref: TemplatePoolRef) -> str:
        return human_size(ref.size)

    @admin.display(description="Physical size", ordering="physical_size")
    def physical(self, ref: TemplatePoolRef) -> str:
        return human_size(ref.physical_size)

    def _each(self, request, queryset, call, done: str) -> None:
        rows = queryset.order_by("pk").values_list("pk", "template_id", "pool_id")
        pairs = {pk: (template_id, pool_id) for pk, template_id, pool_id in rows}
        call_for_each(self, request, pairs, lambda pk: call(*pairs[pk]), done)

    @admin.action(description="Pin (pre-populate) selected copies", permissions=["change"])
    def pin_selected(self, request, queryset):
        def prepare(template_id: int, pool_id: int):
            return pool_copies.template_prepare(
                template_id=template_id, pool_ids=[pool_id], actor=request.user
            )

        self._each(request, queryset, prepare, "Pinned")

    @admin.action(description="Unpin selected copies", permissions=["change"])
    def unpin_selected(self, request, queryset):
        def unpin(template_id: int, pool_id: int):
            return pool_copies.pool_copy_set_pinned(
                template_id=template_id, pool_id=pool_id, pinned=False, actor=request.user
            )

        self._each(request, queryset, unpin, "Unpinned")


# VMs and snapshots -------------------------------------------------------------------------


class VmSnapshotInline(ReadOnlyTabularInline):
    """The VM's snapshots, as recorded from libvirt: shown, never edited here."""

    model = VmSnapshot
    fields = ("name", "description", "created_at")
    readonly_fields = fields


@admin.register(VmSnapshot)
class VmSnapshotAdmin(ReadOnlyAdmin):
    """Every VM snapshot. Taken, reverted and deleted through the API (the VM's host does it)."""

    list_display = ("name", "vm", "description", "created_at")
    list_select_related = ("vm",)
    search_fields = ("name", "vm__name", "vm__uuid")
    fields = ("vm", "name", "description", "uuid", "created_at")


@admin.register(VirtualMachine)
class VirtualMachineAdmin(DeployPageMixin, ObjectActionsMixin, ModelAdmin):
    """VM records. Start, stop, destroy, recover and expunge are actions calling the services;
    the VM's page has buttons for its whole life cycle, snapshots and "Create version"."""

    change_form_template = "admin/stencil/change_form.html"
    change_list_template = "admin/agents_app/virtualmachine/change_list.html"

    list_display = ("name", "template", "zone", "host", "account", "state", "created_at_when")
    created_at_when = when_column("created_at", "Created")
    list_filter = ("state", "stateless", "zone", "host", "account")
    list_select_related = ("template", "zone", "host", "account")
    search_fields = ("name", "uuid", "template__name")
    fields = (
        "name",
        "state",
        "deploy_progress",
        "template",
        "zone",
        "host",
        "pool",
        "account",
        "stateless",
        "follow_channel",
        "root_disk_path",
        "error_text",
        "uuid",
        "destroyed_at",
        "expunged_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    inlines = (VmSnapshotInline,)
    actions = (
        "start_selected",
        "stop_selected",
        "destroy_selected",
        "recover_selected",
        "expunge_selected",
    )

    def has_add_permission(self, request):
        # A VM is made by vm_deploy (the "Deploy VM" page, the API), which checks its template
        # under the template's lock, never by the model form.
        return False

    @admin.display(description="Deploy progress")
    def deploy_progress(self, vm: VirtualMachine) -> str:
        row = vms_progress([vm.pk]).get(vm.pk)
        if row is None or not row["active"]:
            return "—"
        return progress_bar(row["percent"], f"vm:{vm.pk}", active=True)

    def changelist_view(self, request, extra_context=None):
        context = {"may_deploy": self.may_deploy(request), **(extra_context or {})}
        return super().changelist_view(request, context)

    def has_change_permission(self, request, obj=None):
        # The list's actions need the change permission; a VM's own page stays read-only because
        # nothing on it is edited by hand.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        # Rows are never deleted: a VM is destroyed, then expunged, and its record stays.
        return False

    def _each(self, request, queryset, service, done: str) -> None:
        ids = queryset.order_by("pk").values_list("pk", flat=True)
        call_for_each(self, request, ids, lambda pk: service(vm_id=pk, actor=request.user), done)

    @admin.action(description="Start selected VMs", permissions=["change"])
    def start_selected(self, request, queryset):
        self._each(request, queryset, services.vm_start, "Started")

    @admin.action(description="Stop selected VMs", permissions=["change"])
    def stop_selected(self, request, queryset):
        self._each(request, queryset, services.vm_stop, "Stopped")

    @admin.action(description="Destroy selected VMs (recoverable)", permissions=["change"])
    def destroy_selected(self, request, queryset):
        asked = confirm_bulk_action(
            self,
            request,
            queryset,
            label="Destroy selected VMs",
            impact_of=lambda vm: vm_destroy_impact(vm, {}),
        )
        if asked is not None:
            return asked
        self._each(request, queryset, services.vm_destroy, "Destroyed")

    @admin.action(description="Recover selected destroyed VMs", permissions=["change"])
    def recover_selected(self, request, queryset):
        self._each(request, queryset, services.vm_recover, "Recovered")

    @admin.action(description="Expunge selected destroyed VMs", permissions=["change"])
    def expunge_selected(self, request, queryset):
        asked = confirm_bulk_action(
            self,
            request,
            queryset,
            label="Expunge selected VMs",
            impact_of=lambda vm: vm_destroy_impact(vm, {"expunge": True}),
        )
        if asked is not None:
            return asked
        self._each(request, queryset, services.vm_expunge, "Expunged")


# VM pools --------------------------------------------------------------------------------------


class PoolVmInline(ReadOnlyTabularInline):
    """The pool's VMs: their version, state and who took them."""

    model = VirtualMachine
    fk_name = "vm_pool"
    fields = ("name", "template", "state", "taken_by", "host")
    readonly_fields = fields
    show_change_link = True


class VmPoolForm(ServiceErrorFormMixin, forms.ModelForm):
    """What `vm_pool_create` needs. The size and template rules are the service's: a refusal
    comes back on the field it names (ServiceRefusalMixin), e.g. "Size: 1 to 100"."""

    template = TemplateVersionChoiceField()

    class Meta:
        model = VmPool
        fields = ("name", "account", "zone", "template", "follow_channel", "size")

    def field_for(self, error: StencilError) -> str | None:
        if isinstance(error, TemplateNotUsable):
            return "template"
        return super().field_for(error)

    def clean(self):
        """The channel rules of a deploy, checked before the pool's VMs are made."""
        data = super().clean()
        channel, template = data.get("follow_channel"), data.get("template")
        if channel and template is not None:
            try:
                checked_channel_name(channel, field="follow_channel")
                if not channel_is_known(template.pk, channel):
                    raise InvalidInput(f"the lineage has no channel '{channel}'")
            except InvalidInput as error:
                self.add_error("follow_channel", error.message)
        return data


@admin.register(VmPool)
class VmPoolAdmin(ObjectActionsMixin, ServiceRefusalMixin, ModelAdmin):
    """Pools of stateless VMs; created through the service (which deploys the VMs), then taken
    from and returned to with the list's actions."""

    form = VmPoolForm
    list_display = ("name", "template", "follow_channel", "size", "zone", "account")
    list_select_related = ("template", "zone", "account")
    search_fields = ("name", "uuid", "template__name")
    inlines = (PoolVmInline,)
    actions = ("take_selected", "return_selected")

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return ("name", "account", "zone", "template", "follow_channel", "size")

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        if change:
            return
        data = form.cleaned_data
        try:
            created = vm_pools.vm_pool_create(
                name=data["name"],
                template_id=data["template"].pk,
                zone=data["zone"],
                account=data["account"],
                size=data["size"],
                actor=request.user,
                follow_channel=data["follow_channel"],
            )
        except StencilError as error:
            raise ServiceRefused(error) from error
        obj.pk = created.pk

    @admin.action(description="Take a VM from each selected pool", permissions=["change"])
    def take_selected(self, request, queryset):
        ids = queryset.order_by("pk").values_list("pk", flat=True)
        call_for_each(
            self,
            request,
            ids,
            lambda pk: vm_pools.vm_pool_take(pool_id=pk, user=request.user),
            "Taken",
        )

    @admin.action(description="Return my VMs of the selected pools", permissions=["change"])
    def return_selected(self, request, queryset):
        ids = VirtualMachine.objects.filter(
            vm_pool__in=queryset, taken_by=request.user
        ).values_list("pk", flat=True)
        call_for_each(
            self,
            request,
            ids,
            lambda pk: vm_pools.vm_pool_return(vm_id=pk, user=request.user),
            "Returned",
        )


# Direct-download certificates ----------------------------------------------------------------


class HostCertificateInline(ReadOnlyTabularInline):
    """Where the certificate is installed, as each host's agent reported it."""

    model = HostCertificate
    fields = ("host", "state", "error_text", "updated_at")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("host")


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request, model_admin):
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(revoked_at__isnull=self.value() == "no")
        return queryset


@admin.register(DirectDownloadCertificate)
class DirectDownloadCertificateAdmin(ActionsOnlyAdmin):
    """Certificates hosts trust for HTTPS direct downloads; uploaded through the API, revoked
    here or there (the same service)."""

    list_display = ("alias", "zone", "subject", "not_after", "revoked", "hosts_summary")
    list_filter = (RevokedFilter, "zone")
    list_select_related = ("zone",)
    search_fields = ("alias", "subject", "issuer", "serial", "fingerprint_sha256")
    fields = (
        "alias",
        "zone",
        "subject",
        "issuer",
        "serial",
        "not_before",
        "not_after",
        "fingerprint_sha256",
        "pem",
        "revoked_at",
        "uuid",
        "created_at",
    )
    readonly_fields = fields
    inlines = (HostCertificateInline,)
    actions = ("revoke_selected",)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("host_certificates")

    @admin.display(description="Revoked", boolean=True, ordering="revoked_at")
    def revoked(self, cert: DirectDownloadCertificate) -> bool:
        return cert.revoked_at is not None

    @admin.display(description="Hosts")
    def hosts_summary(self, cert: DirectDownloadCertificate) -> str:
        counts = Counter(row.get_state_display().lower() for row in cert.host_certificates.all())
        return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "—"

    @admin.action(description="Revoke (remove from every host)", permissions=["change"])
    def revoke_selected(self, request, queryset):
        ids = queryset.order_by("pk").values_list("pk", flat=True)
        call_for_each(
            self,
            request,
            ids,
            lambda pk: certificate_revoke(certificate_id=pk, actor=request.user),
            "Revoked",
        )


@admin.register(HostCertificate)
class HostCertificateAdmin(ReadOnlyAdmin):
    """Every host's copy of every certificate: find the hosts where an install failed."""

    list_display = ("certificate", "host", "state", "error_text", "updated_at")
    list_filter = ("state", "host")
    list_select_related = ("certificate", "host")
    search_fields = ("certificate__alias", "host__name", "error_text")
    fields = ("certificate", "host", "state", "error_text", "updated_at")


from . import admin_site  # noqa: E402, F401  (branding; third-party admins on the theme)
