"""Admin of virtual machines: listed and shown; their life cycle moves only through services."""

from django.contrib import admin

from templates_app.admin import call_for_each

from . import services
from .models import VirtualMachine


@admin.register(VirtualMachine)
class VirtualMachineAdmin(admin.ModelAdmin):
    """VM records. Start, stop, destroy, recover and expunge are actions calling the services."""

    list_display = ("name", "template", "zone", "account", "state", "created_at")
    list_filter = ("state", "zone", "account")
    list_select_related = ("template", "zone", "account")
    search_fields = ("name", "uuid", "template__name")
    fields = (
        "name",
        "state",
        "template",
        "zone",
        "account",
        "uuid",
        "destroyed_at",
        "expunged_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    actions = (
        "start_selected",
        "stop_selected",
        "destroy_selected",
        "recover_selected",
        "expunge_selected",
    )

    def has_add_permission(self, request):
        # A VM is created through the API, which checks its template under the template's lock.
        return False

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
        self._each(request, queryset, services.vm_destroy, "Destroyed")

    @admin.action(description="Recover selected destroyed VMs", permissions=["change"])
    def recover_selected(self, request, queryset):
        self._each(request, queryset, services.vm_recover, "Recovered")

    @admin.action(description="Expunge selected destroyed VMs", permissions=["change"])
    def expunge_selected(self, request, queryset):
        self._each(request, queryset, services.vm_expunge, "Expunged")
