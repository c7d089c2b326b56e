"""The template admin with lineages: the catalogue's page plus the versions of a base template,
"Save as new version" through `versions_app.services.template_version_create`, and the
lineage's channels page with Promote / Rollback (each confirmed on a page listing the followers
that will be rebuilt) through `versions_app.channels`.

Only standard admin extension points: `get_urls`, views rendering templates that extend
"admin/base_site.html", and an object-tools link on the template's change page.
"""

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timezone import localtime
from unfold.admin import ModelAdmin

from templates_app import admin as catalogue_admin
from templates_app.admin import ReadOnlyTabularInline, admin_link, state_badge
from templates_app.admin_forms import TemplateChangeForm
from templates_app.choices import TemplateState
from templates_app.errors import StencilError
from templates_app.models import Template
from templates_app.secrets import AdminSecrets

from . import channels, selectors, services
from .channel_followers import channel_followers
from .models import Channel
from .object_actions import register_object_actions

HISTORY_SHOWN = 20

register_object_actions()


class TemplateVersionInline(ReadOnlyTabularInline):
    """The versions of a base template (2, 3, ...): shown with a link, edited on their own page."""

    model = Template
    fk_name = "base"
    verbose_name = "version"
    verbose_name_plural = "Versions of this template"
    fields = ("version", "version_name", "version_state", "shown_url", "created_at")
    readonly_fields = fields
    show_change_link = False

    def get_formset(self, request, obj=None, **kwargs):
        self.secrets = AdminSecrets(request.user)  # inline instances are made per request
        return super().get_formset(request, obj, **kwargs)

    @admin.display(description="URL")
    def shown_url(self, template: Template) -> str:
        return self.secrets.url(template)

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
    change_form_template = "admin/versions_app/template/change_form.html"

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

    # The lineage's channels ------------------------------------------------------------------

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["channels_url"] = self._channels_url(obj.lineage_id)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path(
                "<path:object_id>/channels/",
                wrap(self.channels_view),
                name=f"{prefix}_channels",
            ),
            path(
                "<path:object_id>/channels/<str:name>/promote/",
                wrap(self.channel_promote_view),
                name=f"{prefix}_channel_promote",
            ),
            path(
                "<path:object_id>/channels/<str:name>/rollback/",
                wrap(self.channel_rollback_view),
                name=f"{prefix}_channel_rollback",
            ),
        ]
        return own + super().get_urls()

    def _channels_url(self, lineage_id: int) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_channels", args=[lineage_id]
        )

    def _lineage_for(self, request, object_id: str) -> Template:
        """The lineage's base of the template in the URL, for whoever may change templates."""
        template = self.get_object(request, unquote(object_id))
        if template is None:
            raise Http404(f"no template with id {object_id!r}")
        if not self.has_change_permission(request, template):
            raise PermissionDenied
        return template.base if template.base_id else template

    def _page(self, request, lineage: Template, template: str, title: str, **context):
        return TemplateResponse(
            request,
            f"admin/versions_app/{template}",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": title,
                "lineage": lineage,
                "channels_url": self._channels_url(lineage.pk),
                **context,
            },
        )

    def channels_view(self, request, object_id: str) -> HttpResponse:
        """Each channel of the lineage with its version, followers and buttons."""
        lineage = self._lineage_for(request, object_id)
        rows = selectors.channels_seen_by(lineage=lineage)
        for row in rows:
            row["followers"] = channel_followers(lineage_id=lineage.pk, channel=row["name"])
        return self._page(
            request, lineage, "channels.html", f"Channels of “{lineage}”", channels=rows
        )

    def channel_promote_view(self, request, object_id: str, name: str) -> HttpResponse:
        """GET: pick a version; POST: the confirmation page; POST with confirm: promote."""
        lineage = self._lineage_for(request, object_id)
        versions = selectors.lineage_of(lineage.pk).filter(state=TemplateState.ACTIVE)
        chosen = versions.filter(pk=request.POST.get("version") or None).first()
        if request.method == "POST" and chosen is not None and request.POST.get("confirm"):
            return self._move(
                request,
                lineage,
                lambda: channels.channel_promote(
                    template_id=lineage.pk, name=name, version_id=chosen.pk, actor=request.user
                ),
            )
        return self._page(
            request,
            lineage,
            "channel_confirm.html",
            f"Promote channel “{name}” of “{lineage}”",
            action="promote",
            channel_name=name,
            versions=versions,
            target=chosen,
            followers=channel_followers(lineage_id=lineage.pk, channel=name) if chosen else [],
        )

    def channel_rollback_view(self, request, object_id: str, name: str) -> HttpResponse:
        """GET: the confirmation page (where it goes back to, who is rebuilt); POST: roll back."""
        lineage = self._lineage_for(request, object_id)
        if request.method == "POST" and request.POST.get("confirm"):
            return self._move(
                request,
                lineage,
                lambda: channels.channel_rollback(
                    template_id=lineage.pk, name=name, actor=request.user
                ),
            )
        channel = Channel.objects.filter(lineage=lineage, name=name).first()
        return self._page(
            request,
            lineage,
            "channel_confirm.html",
            f"Roll back channel “{name}” of “{lineage}”",
            action="rollback",
            channel_name=name,
            current=channel.version if channel else None,
            target=channel.previous_version if channel else None,
            followers=channel_followers(lineage_id=lineage.pk, channel=name),
        )

    def _move(self, request, lineage: Template, move) -> HttpResponse:
        try:
            channel = move()
        except StencilError as error:
            self.message_user(request, error.message, messages.ERROR)
        else:
            done = f"Channel “{channel.name}” points at version {channel.version.version_number}."
            self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(self._channels_url(lineage.pk))


admin.site.unregister(Template)
admin.site.register(Template, TemplateAdmin)


@admin.register(Channel)
class ChannelAdmin(ModelAdmin):
    """A lineage's channels; moved only through Promote / Rollback (versions_app.channels)."""

    list_display = ("name", "lineage", "version", "previous_version", "moved_at")
    list_select_related = ("lineage", "version", "previous_version")
    search_fields = ("name", "lineage__name")
    fields = (
        "lineage",
        "name",
        "version",
        "previous_version",
        "moved_at",
        "promote_or_rollback",
        "history",
        "uuid",
        "created_at",
    )
    readonly_fields = fields

    @admin.display(description="Moves (newest first)")
    def history(self, channel: Channel) -> str:
        moves = selectors.channel_history(channel)[:HISTORY_SHOWN]
        return (
            format_html_join(
                mark_safe("<br>"),
                "{}: {} by {}",
                ((localtime(m.created_at), m.reason, m.actor_label) for m in moves),
            )
            or "—"
        )

    @admin.display(description="Promote / Rollback")
    def promote_or_rollback(self, channel: Channel) -> str:
        url = reverse("admin:templates_app_template_channels", args=[channel.lineage_id])
        return format_html('<a href="{}">The lineage\'s channels</a>', url)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
