"""Admin of the CloudStack facade: API keys (the secret is never shown; "Regenerate", for a
superuser or the key's owner, shows the new one once to whoever asked) and async jobs (read
only)."""

from django.contrib import admin, messages
from unfold.admin import ModelAdmin

from .keys import api_keys_create
from .models import ApiKey, AsyncJob


@admin.register(ApiKey)
class ApiKeyAdmin(ModelAdmin):
    list_display = ("user", "api_key", "created_at")
    search_fields = ("user__username", "api_key")
    list_select_related = ("user",)
    fields = ("user", "api_key", "created_at")
    readonly_fields = ("user", "api_key", "created_at")
    actions = ["regenerate"]

    def has_add_permission(self, request) -> bool:
        return False  # pairs are made by `manage.py create_api_keys` or "Regenerate"

    @admin.action(description="Regenerate the key pair (shows the new secret once)")
    def regenerate(self, request, queryset) -> None:
        for row in queryset.select_related("user"):
            if not (request.user.is_superuser or row.user_id == request.user.pk):
                self.message_user(
                    request,
                    f"{row.user}: only a superuser or the key's owner may regenerate it",
                    messages.ERROR,
                )
                continue
            pair = api_keys_create(user=row.user, regenerate=True)
            self.message_user(
                request,
                f"{row.user}: apikey {pair.api_key} secretkey {pair.secret_key} "
                "(copy it now: it is not shown again)",
                messages.WARNING,
            )


@admin.register(AsyncJob)
class AsyncJobAdmin(ModelAdmin):
    list_display = ("created_at", "command", "user", "instance_type", "instance_uuid", "status")
    list_filter = ("command", "status")
    list_select_related = ("user",)
    search_fields = ("uuid", "instance_uuid", "user__username")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
