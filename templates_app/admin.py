"""Django admin of the catalogue. Every state change goes through `services`; the admin calls them.

Template pages: registration through `template_register`, edits through `template_update`,
Deactivate/Reactivate buttons and actions, the GC sweep (button, actions, dry run), Extract
(button) and Copy to zones (action) through the catalogue services, the copies,
live references and events of a template (versions_app.admin adds versions to these pages).
Zones, image stores and accounts are plain configuration; events and store copies are read-only.
"""

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timesince import timesince, timeuntil
from django.utils.timezone import localtime
from django.views.decorators.http import require_POST
from django_fsm import can_proceed
from unfold.admin import ModelAdmin, TabularInline

from . import (
    object_actions,  # noqa: F401  (registers the template's page actions)
    selectors,
    services,
    sweeps,
)
from .admin_actions import ObjectActionsMixin, confirm_bulk_action, confirmation_page
from .admin_forms import CopyToZonesForm, TemplateChangeForm, TemplateRegisterForm
from .admin_upload import UploadPageMixin
from .choices import StoreRefState, TemplateState
from .copies import store_copy_retry
from .copy_status import CopyStatus
from .errors import InvalidInput, StencilError
from .impacts import gc_sweep_impact, template_deactivate_impact
from .models import (
    Account,
    Event,
    GcSweepRun,
    ImageStore,
    Template,
    TemplateDetail,
    TemplateStoreRef,
    Zone,
)
from .progress import STORE_IN_FLIGHT
from .references import describe_counts, reference_providers, reference_rows
from .rescan import RescanResult, rescan_images
from .secrets import AdminSecrets, public_url

REFERENCES_SHOWN = 100
EVENTS_SHOWN = 50
NAMES_IN_MESSAGE = 10
# The service's refusal of a first submission, kept on the request for the second rendering.
REFUSAL_ATTRIBUTE = "_stencil_service_refusal"
# The version that "Save as new version" created, for the history entry and the redirect.
NEW_VERSION_ATTRIBUTE = "_stencil_new_version"
SAVE_AS_VERSION = "_saveasversion"


class ServiceRefused(Exception):
    """A service refused a form's input after the form validated; carries the StencilError."""

    def __init__(self, error: StencilError):
        super().__init__(error.message)
        self.error = error


class ServiceRefusalMixin:
    """A ModelAdmin whose `save_model` calls a service: a refusal (StencilError, raised as
    ServiceRefused) comes back as the form's error on the field it names, never as a 500.

    The first pass ran in the admin's transaction, which the exception rolls back, so nothing
    is half-written; the same POST is validated again with the error attached to the form
    (forms mix in admin_forms.ServiceErrorFormMixin).
    """

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change=change, **kwargs)
        refusal = getattr(request, REFUSAL_ATTRIBUTE, None)
        if refusal is None:
            return form_class
        return type(form_class.__name__, (form_class,), {"service_error": refusal})

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceRefused as refused:
            setattr(request, REFUSAL_ATTRIBUTE, refused.error)
            return super().changeform_view(request, object_id, form_url, extra_context)


# Helpers shared with agents_app.admin ------------------------------------------------------


def report_rescan(modeladmin: admin.ModelAdmin, request: HttpRequest, result: RescanResult) -> None:
    """One message with the rescan's counts; a warning when something was quarantined."""
    level = messages.WARNING if result.quarantined else messages.SUCCESS
    modeladmin.message_user(request, f"Rescan of stored images: {result}.", level)


def call_for_each(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    ids: Iterable[int],
    call: Callable[[int], object],
    done: str,
) -> None:
    """Call a service once per object; report how many went through and each refusal."""
    succeeded = 0
    for object_id in ids:
        try:
            call(object_id)
        except StencilError as error:
            modeladmin.message_user(request, error.message, messages.ERROR)
        else:
            succeeded += 1
    if succeeded:
        modeladmin.message_user(request, f"{done}: {succeeded}.", messages.SUCCESS)


def admin_link(app_label: str, model_name: str, object_id: int, text: str) -> str:
    """A link to an object's admin page, or plain text when its model is not in the admin."""
    try:
        url = reverse(f"admin:{app_label}_{model_name}_change", args=[object_id])
    except NoReverseMatch:
        return text
    return format_html('<a href="{}">{}</a>', url, text)


def copy_status_filter(with_status: Callable) -> type[admin.SimpleListFilter]:
    """The list filter "Failed / In progress / Stuck" of a kind of copy; `with_status` is its
    selector (queryset, status) -> queryset (templates_app.copy_status)."""

    class CopyStatusFilter(admin.SimpleListFilter):
        title = "failed / in progress / stuck"
        parameter_name = "status"

        def lookups(self, request, model_admin):
            return CopyStatus.choices

        def queryset(self, request, queryset):
            value = self.value()
            if value not in CopyStatus.values:
                return queryset
            return with_status(queryset, value)

    return CopyStatusFilter


class RetryDownloadMixin:
    """ "Retry download" of a kind of copy: a list action and a button on the change page, both
    calling the service `retry_service(ref_id=..., actor=...)`. The button is shown while the
    FSM transition `retry_transition` can proceed."""

    change_form_template = "admin/templates_app/copy_change_form.html"
    retry_service: Callable[..., object]
    retry_transition: str

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path(
                "<path:object_id>/retry/",
                self.admin_site.admin_view(require_POST(self.retry_view)),
                name=f"{prefix}_retry",
            )
        ]
        return own + super().get_urls()

    def _admin_url(self, name: str, *args) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=args)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        context = dict(extra_context or {})
        ref = self.get_object(request, unquote(object_id))
        if (
            ref is not None
            and self.has_change_permission(request)
            and can_proceed(getattr(ref, self.retry_transition))
        ):
            context["retry_url"] = self._admin_url("retry", ref.pk)
        return super().change_view(request, object_id, form_url, context)

    def retry_view(self, request, object_id: str) -> HttpResponse:
        ref = self.get_object(request, unquote(object_id))
        if ref is None:
            raise Http404(f"no copy with id {object_id!r}")
        if not self.has_change_permission(request):
            raise PermissionDenied
        try:
            ref = type(self).retry_service(ref_id=ref.pk, actor=request.user)
        except StencilError as error:
            self.message_user(request, error.message, messages.ERROR)
        else:
            self.message_user(request, f"Retry download: “{ref}” is queued.", messages.SUCCESS)
        return HttpResponseRedirect(self._admin_url("change", ref.pk))

    @admin.action(description="Retry download of selected copies", permissions=["change"])
    def retry_selected(self, request, queryset):
        service = type(self).retry_service
        ids = queryset.order_by("pk").values_list("pk", flat=True)
        call_for_each(
            self, request, ids, lambda pk: service(ref_id=pk, actor=request.user), "Queued again"
        )


class ReadOnlyTabularInline(TabularInline):
    """Rows that services and agents write: shown on the parent's page, never edited there."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def progress_bar(percent: int, key: str = "", active: bool = False) -> str:
    """A progress bar; with `key` ("store:12") static/stencil/progress.js keeps it moving
    while `active` (work in flight), with speed and time left."""
    bar = format_html(
        '<progress max="100" value="{}"></progress> <span class="stencil-progress-text">{}%</span>',
        percent,
        percent,
    )
    if not key:
        return bar
    return format_html(
        '<span class="stencil-progress" data-stencil-progress="{}" data-active="{}">{}</span>',
        key,
        "1" if active else "0",
        bar,
    )


def store_progress(ref: TemplateStoreRef) -> str:
    active = ref.download_state in STORE_IN_FLIGHT
    return progress_bar(ref.download_percent, f"store:{ref.pk}", active)


def human_size(value: int | None) -> str:
    return "—" if value is None else filesizeformat(value)


def relative_time(value: datetime | None, now: datetime | None = None) -> str:
    """'3 minutes ago' / 'in 2 hours': how far a time is from now, in words."""
    if value is None:
        return "—"
    now = now or timezone.now()
    seconds = int((now - value).total_seconds())
    if abs(seconds) < 1:
        return "just now"
    if abs(seconds) < 60:  # timesince() counts whole minutes only
        unit = "second" if abs(seconds) == 1 else "seconds"
        return f"{seconds} {unit} ago" if seconds > 0 else f"in {-seconds} {unit}"
    if value <= now:
        return f"{timesince(value, now, depth=1)} ago"
    return f"in {timeuntil(value, now, depth=1)}"


def when(value: datetime | None) -> str:
    """A time as operators read it: '2026-12-03 13:45:12 (3 minutes ago)', the ISO value in
    the element for machines."""
    if value is None:
        return "—"
    local = localtime(value)
    return format_html(
        '<time datetime="{}">{} <span class="stencil-ago">({})</span></time>',
        local.isoformat(),
        date_format(local, "DATETIME_FORMAT"),
        relative_time(value),
    )


def when_column(field: str, description: str):
    """A list column showing `field` with `when`, sortable on the field."""

    @admin.display(description=description, ordering=field)
    def column(self, obj) -> str:
        return when(getattr(obj, field))

    column.__name__ = f"{field}_when"
    return column


def _names(rows: list[dict], total: int) -> str:
    names = ", ".join(row["name"] for row in rows[:NAMES_IN_MESSAGE])
    more = total - min(len(rows), NAMES_IN_MESSAGE)
    return f"{names} and {more} more" if more > 0 else names


def _holder(row: dict) -> str:
    return f"{row['name']} ({describe_counts(row['references'])})"


def sweep_message(result: services.SweepResult) -> str:
    """One line saying what a sweep removed (or would remove) and what holds the rest."""
    if result.skipped:
        return "Another GC sweep is running; this one did nothing. Try again in a moment."
    did = "GC sweep dry run would remove" if result.dry_run else "GC sweep removed"
    text = f"{did} {result.removed_count} template(s)"
    if result.removed_count:
        text += f" ({_names(result.removed, result.removed_count)})"
    text += f"; {result.held_count} held by live references"
    if result.held_count:
        holders = [_holder(row) for row in result.held[:NAMES_IN_MESSAGE]]
        more = result.held_count - len(holders)
        text += ": " + ", ".join(holders) + (f" and {more} more" if more > 0 else "")
    return text + "."


# Template ----------------------------------------------------------------------------------

SHOWN_URL = "shown_url"  # the URL field for staff who may not see its secrets


class TemplateStoreRefInline(ReadOnlyTabularInline):
    """The template's copies on image stores (or its BYPASSED row): shown, never edited."""

    model = TemplateStoreRef
    verbose_name = "copy"
    verbose_name_plural = "Copies on image stores"
    fields = (
        "store",
        "download_state",
        "state",
        "progress",
        "virtual_size",
        "physical",
        "install_path",
        "error_text",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("store__zone")

    @admin.display(description="Progress")
    def progress(self, ref: TemplateStoreRef) -> str:
        return store_progress(ref)

    @admin.display(description="Size")
    def virtual_size(self, ref: TemplateStoreRef) -> str:
        return human_size(ref.size)

    @admin.display(description="Physical size")
    def physical(self, ref: TemplateStoreRef) -> str:
        return human_size(ref.physical_size)


class TemplateDetailInline(ReadOnlyTabularInline):
    """Key/value details (e.g. HTTP_HEADER), set at registration. Header values are shown to
    superusers and the owner's members only (templates_app/secrets.py)."""

    model = TemplateDetail
    fields = ("key", "shown_value")
    readonly_fields = fields

    def get_formset(self, request, obj=None, **kwargs):
        self.secrets = AdminSecrets(request.user)  # inline instances are made per request
        return super().get_formset(request, obj, **kwargs)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("template")

    @admin.display(description="Value")
    def shown_value(self, detail: TemplateDetail) -> str:
        return self.secrets.detail_value(detail)


def removal_text(template: Template) -> str:
    """When the bytes went, or for an INACTIVE template when the sweep may remove them."""
    if template.removed_at is not None:
        return f"removed {date_format(localtime(template.removed_at), 'DATETIME_FORMAT')}"
    when = template.removal_not_before
    if when is None:
        return "—"
    text = f"removed after {date_format(localtime(when), 'DATETIME_FORMAT')}"
    if getattr(template, "references", 0):
        text += " once nothing references it"
    return text


def state_badge(template: Template) -> str:
    return format_html(
        '<span class="stencil-state stencil-state-{}">{}</span>',
        template.state.lower(),
        template.state,
    )


# Bulk actions of the list: action -> service.
TRANSITIONS = {
    "deactivate": services.template_deactivate,
    "reactivate": services.template_reactivate,
}


class TemplateStateFilter(admin.SimpleListFilter):
    """State, with REMOVED templates hidden unless asked for: their bytes are gone, and they
    would crowd out what operators look for."""

    title = "state"
    parameter_name = "state"
    EVERY = "all"

    def lookups(self, request, model_admin):
        return [
            (None, "Not removed"),
            *[(state.value, state.label) for state in TemplateState],
            (self.EVERY, "All, removed too"),
        ]

    def choices(self, changelist):
        for value, label in self.lookup_choices:
            yield {
                "selected": self.value() == value,
                "query_string": changelist.get_query_string(
                    {self.parameter_name: value} if value else {}, [self.parameter_name]
                ),
                "display": label,
            }

    def queryset(self, request, queryset):
        value = self.value()
        if value == self.EVERY:
            return queryset
        if value in TemplateState.values:
            return queryset.filter(state=value)
        return queryset.exclude(state=TemplateState.REMOVED)


def readiness_text(copy: TemplateStoreRef) -> str:
    """One store copy in a word: READY, n% while it moves, or the error."""
    if copy.state == StoreRefState.READY:
        return "READY"
    if copy.download_state in selectors.STORE_COPY_IN_PROGRESS:
        return f"{copy.download_percent}%"
    if copy.error_text or copy.download_state in selectors.STORE_COPY_FAILED:
        return f"error: {copy.error_text or copy.get_download_state_display()}"
    return copy.get_download_state_display()


@admin.register(Template)
class TemplateAdmin(UploadPageMixin, ObjectActionsMixin, ServiceRefusalMixin, ModelAdmin):
    """Templates and ISOs: registration, edits, the life cycle and the GC sweep."""

    form = TemplateChangeForm
    add_form = TemplateRegisterForm
    change_form_template = "admin/templates_app/template/change_form.html"
    change_list_template = "admin/templates_app/template/change_list.html"
    list_display = (
        "version_column",
        "kind",
        "format",
        "os_type",
        "account",
        "state_badge",
        "readiness",
        "sizes",
        "zone_names",
        "removal",
        "references",
        "is_public",
        "created_at_when",
    )
    list_display_links = ("version_column",)
    created_at_when = when_column("created_at", "Registered")
    list_filter = (
        TemplateStateFilter,
        "kind",
        "format",
        "zones",
        "account",
        "is_public",
        "is_featured",
        "direct_download",
    )
    list_select_related = ("account",)
    search_fields = ("name", "display_text", "unique_name", "uuid")
    inlines = (TemplateStoreRefInline, TemplateDetailInline)
    actions = (
        "deactivate_selected",
        "reactivate_selected",
        "sweep_selected",
        "sweep_dry_run",
        "rescan_selected",
        "copy_to_zones",
    )
    add_fieldsets = (
        (None, {"fields": ("name", "display_text", "kind", "format", "url", "checksum")}),
        ("Placement", {"fields": ("account", "zones", "cross_zones", "os_type")}),
        (
            "Options",
            {"fields": ("is_public", "is_featured", "direct_download", "primary_policy")},
        ),
    )
    fieldsets = (
        (None, {"fields": ("name", "display_text", "os_type", "is_public", "is_featured")}),
        ("Version", {"fields": ("version_number", "version_name", "base_link")}),
        ("Life cycle", {"fields": ("state_badge", "removal", "references")}),
        (
            "Image",
            {
                "fields": (
                    "kind",
                    "format",
                    "url",
                    "checksum",
                    "hypervisor",
                    "direct_download",
                    "primary_policy",
                )
            },
        ),
        ("Placement", {"fields": ("account", "zones", "cross_zones", "shared_with")}),
        ("Identity", {"fields": ("uuid", "unique_name", "created_at", "updated_at")}),
    )
    # `state` is a protected FSM field: never in a form, even if a fieldset names it one day.
    readonly_fields = (
        "state",
        "state_badge",
        "removal",
        "removed_at",
        "deactivated_at",
        "references",
        "version_number",
        "base_link",
        "kind",
        "hypervisor",
        "direct_download",
        "primary_policy",
        "account",
        "zones",
        "cross_zones",
        "shared_with",
        "uuid",
        "unique_name",
        "created_at",
        "updated_at",
    )

    # Columns ---------------------------------------------------------------------------

    def get_queryset(self, request):
        # The live reference count is one subquery of the list query, not a query per row;
        # copies and zones are two prefetches for the whole page.
        copies = TemplateStoreRef.objects.select_related("store__zone").order_by(
            "store__zone__name"
        )
        return selectors.with_reference_count(super().get_queryset(request)).prefetch_related(
            Prefetch("store_refs", queryset=copies), "zones"
        )

    @admin.display(description="Template", ordering="name")
    def version_column(self, template: Template) -> str:
        return template.version_label

    @admin.display(description="Ready per zone")
    def readiness(self, template: Template) -> str:
        rows = [
            (copy.store.zone.name if copy.store else "direct", readiness_text(copy))
            for copy in template.store_refs.all()
            if copy.state not in (StoreRefState.DESTROYING, StoreRefState.DESTROYED)
        ]
        if not rows:
            return "—"
        return format_html_join(
            mark_safe("<br>"),
            '{}: <span class="stencil-state stencil-state-{}">{}</span>',
            (
                (
                    zone,
                    "ready"
                    if text == "READY"
                    else "error"
                    if text.startswith("error")
                    else "progress",
                    text,
                )
                for zone, text in rows
            ),
        )

    @admin.display(description="Size (virtual / physical)")
    def sizes(self, template: Template) -> str:
        copies = [c for c in template.store_refs.all() if c.size or c.physical_size]
        if not copies:
            return "—"
        virtual = max((c.size or 0) for c in copies)
        physical = max((c.physical_size or 0) for c in copies)
        return f"{human_size(virtual or None)} / {human_size(physical or None)}"

    @admin.display(description="Zones")
    def zone_names(self, template: Template) -> str:
        return ", ".join(zone.name for zone in template.zones.all()) or "—"

    @admin.display(description="State", ordering="state")
    def state_badge(self, template: Template) -> str:
        return state_badge(template)

    @admin.display(description="Removal", ordering="removed_at")
    def removal(self, template: Template) -> str:
        return removal_text(template)

    @admin.display(description="Base template")
    def base_link(self, template: Template) -> str:
        if template.base_id is None:
            return "— (this is the base template, version 1)"
        return admin_link("templates_app", "template", template.base_id, str(template.base))

    @admin.display(description="References", ordering="references")
    def references(self, template: Template) -> int:
        return template.references

    # Forms -----------------------------------------------------------------------------

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "url":
            # A scheme-less URL typed in the form means https (Django 6's default, set now).
            kwargs["assume_scheme"] = "https"
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.add_fieldsets
        fieldsets = super().get_fieldsets(request, obj)
        if AdminSecrets(request.user).may_see(obj.account_id):
            return fieldsets
        # Staff outside the owning account see the URL as other accounts do (no query string,
        # no credentials), read-only: the form never holds the secret.
        return [
            (name, {**opts, "fields": [SHOWN_URL if f == "url" else f for f in opts["fields"]]})
            for name, opts in fieldsets
        ]

    @admin.display(description="URL")
    def shown_url(self, template: Template) -> str:
        return public_url(template.url)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        if not AdminSecrets(request.user).may_see(obj.account_id):
            return (*self._readonly_fields(obj), SHOWN_URL)
        return self._readonly_fields(obj)

    def _readonly_fields(self, obj: Template) -> tuple:
        if obj.state == TemplateState.REMOVED:
            # A removed template is frozen: the service would refuse any edit.
            return self.readonly_fields + TemplateChangeForm.Meta.fields
        if obj.state != TemplateState.ACTIVE:
            # The image fields only feed "Save as new version", offered on ACTIVE templates.
            return self.readonly_fields + TemplateChangeForm.IMAGE_FIELDS
        return self.readonly_fields

    def get_inline_instances(self, request, obj=None):
        return [] if obj is None else super().get_inline_instances(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request, obj, form, change):
        """Register, update or save as a new version through the services; the admin never
        saves the row itself."""
        try:
            if change and SAVE_AS_VERSION in request.POST:
                self._save_as_version(request, obj, form)
            elif change:
                self._update(request, obj, form)
            else:
                self._register(request, obj, form)
        except StencilError as error:
            raise ServiceRefused(error) from error

    def _register(self, request, obj: Template, form: TemplateRegisterForm) -> None:
        template = services.template_register(actor=request.user, **form.register_kwargs())
        # The admin goes on with `obj` (history entry, redirect): load the registered row into it.
        obj.pk = template.pk
        obj.refresh_from_db()

    def _update(self, request, obj: Template, form: TemplateChangeForm) -> None:
        changes = form.update_changes()
        image = [name for name in TemplateChangeForm.IMAGE_FIELDS if name in changes]
        if image:
            raise InvalidInput(
                "a template's image never changes: use “Save as new version” to register "
                "these values as a new version",
                field=image[0],
            )
        if changes:
            services.template_update(template_id=obj.pk, actor=request.user, changes=changes)

    # versions_app.admin serves a subclass that offers "Save as new version".
    supports_versions = False

    def _save_as_version(self, request, obj: Template, form: TemplateChangeForm) -> None:
        raise InvalidInput("this admin does not create versions", field="version_name")

    def log_change(self, request, obj, message):
        version = getattr(request, NEW_VERSION_ATTRIBUTE, None)
        if version is not None:
            # Nothing of `obj` changed: the history records the new version's addition.
            return self.log_addition(request, version, [{"added": {}}])
        return super().log_change(request, obj, message)

    def response_change(self, request, obj):
        version = getattr(request, NEW_VERSION_ATTRIBUTE, None)
        if version is None:
            return super().response_change(request, obj)
        base = version.base
        self.message_user(
            request,
            f"Created version {version.version_number} of “{base}”; “{obj}” is unchanged.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(self._url("change", version.pk))

    def save_related(self, request, form, formsets, change):
        """No form.save_m2m(): the service set the zones. The read-only inlines save nothing."""
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def has_delete_permission(self, request, obj=None):
        # Rows are never deleted: "delete" is Deactivate, and only the GC sweep removes.
        return False

    def changelist_view(self, request, extra_context=None):
        # The sweep buttons are shown to whoever may change templates.
        context = {"has_change_permission": self.has_change_permission(request)}
        return super().changelist_view(request, {**context, **(extra_context or {})})

    # Change page: buttons, references, events ------------------------------------------

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context.update(self._life_cycle_context(request, obj))
            context.update(self._version_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _version_context(self, request, template: Template) -> dict:
        offered = (
            self.supports_versions
            and template.state == TemplateState.ACTIVE
            and self.has_change_permission(request, template)
        )
        return {
            "show_save_as_version": offered,
            "version_base": template.base if template.base_id else template,
        }

    def _life_cycle_context(self, request, template: Template) -> dict:
        every = reference_rows(template)
        references = every[:REFERENCES_SHOWN]
        # One more than shown tells whether to link to the full list.
        events = list(self._events_of(request, template)[: EVENTS_SHOWN + 1])
        more_events = len(events) > EVENTS_SHOWN
        labels = {provider.kind: provider.label for provider in reference_providers()}
        for row in references:
            row["kind_label"] = labels.get(row["kind"], row["kind"])
        return {
            "live_references": references,
            # Heading, summary and table come from the same rows, so they always agree.
            "reference_count": len(every),
            "reference_summary": describe_counts(Counter(row["kind"] for row in every)),
            "template_events": events[:EVENTS_SHOWN],
            "more_events_url": self._more_events_url(template) if more_events else "",
        }

    def _events_of(self, request, template: Template):
        content_type = ContentType.objects.get_for_model(Template)
        return selectors.events_visible_to(request.user).filter(
            content_type=content_type, object_id=template.pk
        )

    def _more_events_url(self, template: Template) -> str:
        content_type = ContentType.objects.get_for_model(Template)
        query = f"content_type__id__exact={content_type.pk}&object_id={template.pk}"
        return self._list_url("templates_app_event", query)

    @staticmethod
    def _list_url(model: str, query: str) -> str:
        """An admin changelist URL with a filter, or '' when that model is not in the admin."""
        try:
            return f"{reverse(f'admin:{model}_changelist')}?{query}"
        except NoReverseMatch:
            return ""

    # Custom URLs: POST-only life-cycle buttons -----------------------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        opts = self.opts
        prefix = f"{opts.app_label}_{opts.model_name}"
        own = [
            path("sweep/", wrap(require_POST(self.sweep_view)), name=f"{prefix}_sweep"),
            path(
                "sweep/dry-run/",
                wrap(require_POST(self.sweep_dry_run_view)),
                name=f"{prefix}_sweep_dry_run",
            ),
        ]
        # Before the admin's own patterns: `<path:object_id>/` would swallow these.
        return own + super().get_urls()

    def _url(self, name: str, *args) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=args)

    def sweep_view(self, request) -> HttpResponse:
        return self._sweep_and_return(request, dry_run=False)

    def sweep_dry_run_view(self, request) -> HttpResponse:
        return self._sweep_and_return(request, dry_run=True)

    def _sweep_and_return(self, request, *, dry_run: bool) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        if not dry_run and request.POST.get("confirm") != "yes":
            # A sweep deletes bytes: first the page listing what it would remove, and why not.
            return confirmation_page(
                self,
                request,
                title="Run the GC sweep now",
                impact=gc_sweep_impact(),
                back_url=self._url("changelist"),
                label="Run GC sweep now",
            )
        self._sweep(request, dry_run=dry_run)
        return HttpResponseRedirect(self._url("changelist"))

    def _sweep(self, request, *, dry_run: bool, template_ids: list[int] | None = None) -> None:
        """A dry run answers here; a real sweep is queued and its run's page tells the rest."""
        if not dry_run:
            run = sweeps.gc_sweep_request(actor=request.user, template_ids=template_ids)
            self.message_user(request, queued_sweep_message(run), messages.SUCCESS)
            return
        result = services.gc_sweep(dry_run=True, template_ids=template_ids, actor=request.user)
        level = messages.WARNING if result.skipped else messages.SUCCESS
        self.message_user(request, sweep_message(result), level)

    # Actions -----------------------------------------------------------------------------

    @admin.action(description="Deactivate (delete) selected templates", permissions=["change"])
    def deactivate_selected(self, request, queryset):
        asked = confirm_bulk_action(
            self,
            request,
            queryset.filter(state=TemplateState.ACTIVE),
            label="Deactivate (delete) selected templates",
            impact_of=template_deactivate_impact,
        )
        if asked is not None:
            return asked
        self._transition_each(request, queryset, "deactivate", "Deactivated")

    @admin.action(description="Reactivate selected templates", permissions=["change"])
    def reactivate_selected(self, request, queryset):
        self._transition_each(request, queryset, "reactivate", "Reactivated")

    def _transition_each(self, request, queryset, action: str, done: str) -> None:
        service = TRANSITIONS[action]
        ids = queryset.order_by("pk").values_list("pk", flat=True)
        call_for_each(
            self, request, ids, lambda pk: service(template_id=pk, actor=request.user), done
        )

    @admin.action(description="Run GC sweep now on selected templates", permissions=["change"])
    def sweep_selected(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        self._sweep(request, dry_run=False, template_ids=ids)

    @admin.action(description="GC sweep dry run on selected templates", permissions=["change"])
    def sweep_dry_run(self, request, queryset):
        ids = list(queryset.values_list("pk", flat=True))
        self._sweep(request, dry_run=True, template_ids=ids)

    @admin.action(description="Copy selected templates to zones", permissions=["change"])
    def copy_to_zones(self, request, queryset):
        """Ask for the zones, then `template_zones_add` per template (store to store when a
        READY copy exists, else from the URL)."""
        form = CopyToZonesForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            zones = list(form.cleaned_data["zones"])
            ids = queryset.order_by("pk").values_list("pk", flat=True)
            call_for_each(
                self,
                request,
                ids,
                lambda pk: services.template_zones_add(
                    template_id=pk, zones=zones, actor=request.user
                ),
                f"Copies to {', '.join(zone.name for zone in zones)} queued",
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Copy templates to zones",
            "opts": self.opts,
            "form": form,
            "templates": queryset.order_by("name"),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/templates_app/template/copy_to_zones.html", context)

    @admin.action(description="Rescan images of selected templates", permissions=["change"])
    def rescan_selected(self, request, queryset):
        copies = TemplateStoreRef.objects.filter(template__in=queryset)
        report_rescan(self, request, rescan_images(copies=copies, actor=request.user))


# Configuration -----------------------------------------------------------------------------


@admin.register(Zone)
class ZoneAdmin(ModelAdmin):
    """Availability zones."""

    list_display = ("name", "description", "created_at")
    search_fields = ("name", "description")
    readonly_fields = ("uuid", "created_at")


@admin.register(ImageStore)
class ImageStoreAdmin(ModelAdmin):
    """Secondary storage: one directory per store, in one zone."""

    list_display = ("name", "zone", "path", "state", "disk", "stencil_bytes", "templates")
    list_filter = ("zone", "state")
    list_select_related = ("zone",)
    search_fields = ("name", "path")
    # Usage is counted by the storage services, not typed in.
    readonly_fields = ("uuid", "used_bytes", "created_at")

    def get_queryset(self, request):
        return selectors.stores_with_usage(super().get_queryset(request))

    @admin.display(description="Disk (used of capacity)")
    def disk(self, store: ImageStore) -> str:
        # The file system itself (statvfs), so files on disk never read as 0 bytes.
        capacity, used = selectors.disk_usage(store.path)
        if capacity is None:
            limit = store.capacity_bytes
            return f"not readable here; limit {human_size(limit)}" if limit else "not readable here"
        percent = round(used * 100 / capacity) if capacity else 0
        return f"{filesizeformat(used)} of {filesizeformat(capacity)} ({percent}%)"

    @admin.display(description="Stencil's copies", ordering="stencil_bytes")
    def stencil_bytes(self, store: ImageStore) -> str:
        return filesizeformat(store.stencil_bytes or 0)

    @admin.display(description="Templates", ordering="template_count")
    def templates(self, store: ImageStore) -> str:
        url = reverse("admin:templates_app_templatestoreref_changelist")
        return format_html(
            '<a href="{}?store__id__exact={}">{}</a>', url, store.pk, store.template_count
        )


@admin.register(Account)
class AccountAdmin(ModelAdmin):
    """Tenants: members, limits (empty = unlimited) and what they use."""

    list_display = (
        "name",
        "used_templates",
        "max_templates",
        "used_secondary",
        "max_secondary",
        "created_at",
    )
    search_fields = ("name",)
    filter_horizontal = ("members",)
    fields = (
        "name",
        "members",
        ("used_templates", "max_templates"),
        ("used_secondary_bytes", "max_secondary_bytes"),
        "max_vms",
        "uuid",
        "created_at",
    )
    # Usage moves only with registrations and removals (services), never by hand.
    readonly_fields = ("used_templates", "used_secondary_bytes", "uuid", "created_at")

    @admin.display(description="Secondary used", ordering="used_secondary_bytes")
    def used_secondary(self, account: Account) -> str:
        return filesizeformat(account.used_secondary_bytes)

    @admin.display(description="Secondary limit", ordering="max_secondary_bytes")
    def max_secondary(self, account: Account) -> str:
        if account.max_secondary_bytes is None:
            return "unlimited"
        return filesizeformat(account.max_secondary_bytes)


# Read-only records -------------------------------------------------------------------------


class ReadOnlyAdmin(ModelAdmin):
    """Records written only by services: listed and shown, never added, changed or deleted."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    """The state changes of every object: what, from, to, who, why, when."""

    list_display = (
        "created_at_when",
        "object_link",
        "content_type",
        "from_state",
        "to_state",
        "actor_label",
        "reason",
    )
    created_at_when = when_column("created_at", "When")
    list_filter = ("to_state", ("content_type", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("content_type",)
    search_fields = ("object_repr", "actor_label", "reason")

    @admin.display(description="Object", ordering="object_repr")
    def object_link(self, event: Event) -> str:
        content_type = event.content_type
        return admin_link(
            content_type.app_label, content_type.model, event.object_id, event.object_repr
        )


@admin.register(TemplateStoreRef)
class TemplateStoreRefAdmin(ObjectActionsMixin, RetryDownloadMixin, ReadOnlyAdmin):
    """Every copy on every image store, with its download progress and errors; a failed
    download can be retried (list action, button on the copy's page)."""

    retry_service = staticmethod(store_copy_retry)
    retry_transition = "retry_download"
    change_list_template = "admin/stencil/change_list.html"
    list_display = (
        "template",
        "store",
        "download_state",
        "state",
        "progress",
        "virtual_size",
        "physical",
        "attempts",
        "updated_at_when",
    )
    updated_at_when = when_column("updated_at", "Updated")
    list_filter = (
        copy_status_filter(selectors.store_copies_with_status),
        "download_state",
        "state",
        "store",
    )
    actions = ("retry_selected", "rescan_selected")
    list_select_related = ("template", "store__zone")
    search_fields = ("template__name", "install_path", "error_text")

    @admin.display(description="Progress", ordering="download_percent")
    def progress(self, ref: TemplateStoreRef) -> str:
        return store_progress(ref)

    @admin.display(description="Size", ordering="size")
    def virtual_size(self, ref: TemplateStoreRef) -> str:
        return human_size(ref.size)

    @admin.display(description="Physical size", ordering="physical_size")
    def physical(self, ref: TemplateStoreRef) -> str:
        return human_size(ref.physical_size)

    @admin.action(
        description="Rescan selected copies (quarantine failures)", permissions=["change"]
    )
    def rescan_selected(self, request, queryset):
        report_rescan(self, request, rescan_images(copies=queryset, actor=request.user))

    def has_change_permission(self, request, obj=None):
        # The list's action needs the change permission; a copy's own page stays read-only:
        # agents and services write it.
        return obj is None and admin.ModelAdmin.has_change_permission(self, request)


# GC sweep runs -----------------------------------------------------------------------------


def queued_sweep_message(run: GcSweepRun) -> str:
    """Says a sweep was queued, of what, with a link to the run's page."""
    scope = (
        "every INACTIVE template"
        if run.template_ids is None
        else f"{len(run.template_ids)} selected template(s)"
    )
    link = admin_link("templates_app", "gcsweeprun", run.pk, str(run))
    return format_html(
        "GC sweep of {} queued: {}. It runs in the background; its page shows what it removed.",
        scope,
        link,
    )


@admin.register(GcSweepRun)
class GcSweepRunAdmin(ReadOnlyAdmin):
    """Sweeps queued from the API and the admin: who asked, what they removed, or why not."""

    list_display = ("created_at_when", "uuid", "state", "requested_by", "removed", "finished_at")
    created_at_when = when_column("created_at", "Queued")
    list_filter = ("state",)
    list_select_related = ("requested_by",)
    search_fields = ("uuid", "requested_by__username", "error_text")
    fields = (
        "uuid",
        "state",
        "requested_by",
        "template_ids",
        "summary",
        "error_text",
        "result",
        ("created_at", "started_at", "finished_at"),
    )
    readonly_fields = (*fields[:-1], *fields[-1])

    @admin.display(description="Removed")
    def removed(self, run: GcSweepRun) -> str:
        return "—" if run.result is None else str(run.result.get("removed_count", 0))

    @admin.display(description="Summary")
    def summary(self, run: GcSweepRun) -> str:
        if run.result is None:
            return run.get_state_display()
        return sweep_message(services.SweepResult(**run.result))


from .cloudstack import admin as cloudstack_admin  # noqa: E402, F401  (registers its models)
