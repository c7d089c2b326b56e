"""The template admin with lineages: the catalogue's page plus the versions of a base template
and "Save as new version" through `versions_app.services.template_version_create`."""

from django.contrib import admin

from templates_app import admin as catalogue_admin
from templates_app.admin import ReadOnlyTabularInline, admin_link, state_badge
from templates_app.admin_forms import TemplateChangeForm
from templates_app.models import Template

from . import services
from .models import Channel


class TemplateVersionInline(ReadOnlyTabularInline):
    """The versions of a base template (2, 3, ...): shown with a link, edited on their own page."""

    model = Template
    fk_name = "base"
    verbose_name = "version"
    verbose_name_plural = "Versions of this template"
    fields = ("version", "version_name", "version_state", "url", "created_at")
    readonly_fields = fields
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("version_number")

    @admin.display(description="Version")
    def version(self, template: Template) -> str:
        return admin_link(
            "templates_app", "template", template.pk, f"{template.version_number}: {template}"
        )

    @admin.display(description="State")
    def version_state(self, template: Template) -> str:
        return state_badge(template)


class TemplateAdmin(catalogue_admin.TemplateAdmin):
    supports_versions = True
    inlines = (TemplateVersionInline, *catalogue_admin.TemplateAdmin.inlines)

    def get_inline_instances(self, request, obj=None):
        inlines = super().get_inline_instances(request, obj)
        if obj is not None and obj.base_id is not None:
            # A version has no versions of its own.
            inlines = [i for i in inlines if not isinstance(i, TemplateVersionInline)]
        return inlines

    def _save_as_version(self, request, obj: Template, form: TemplateChangeForm) -> None:
        """A new version of the lineage's base from the page's values; `obj` stays unchanged."""
        version = services.template_version_create(
            base_template_id=obj.lineage_id, actor=request.user, **form.version_kwargs()
        )
        setattr(request, catalogue_admin.NEW_VERSION_ATTRIBUTE, version)


admin.site.unregister(Template)
admin.site.register(Template, TemplateAdmin)


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    """A lineage's channels; moved only through Promote / Rollback (versions_app.channels)."""

    list_display = ("name", "lineage", "version", "previous_version", "moved_at")
    list_select_related = ("lineage", "version", "previous_version")
    search_fields = ("name", "lineage__name")
    fields = ("lineage", "name", "version", "previous_version", "moved_at", "uuid", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
