"""Actions on an object's admin page: a registry the catalogue owns, and the ModelAdmin mixin
that shows them as buttons and runs them.

An action names a service to call (`run`), when its button is shown (`shown`), an optional form
asking for its input, and, for destructive ones, `impact`: a selector (templates_app.impacts and
the upper layers' impacts modules) that lists exactly what will be affected, shown on a
confirmation page before anything happens. Upper layers add actions to lower layers' models
(compute's "Prepare on pools" on a template) with `register_action` from their admin modules,
so the catalogue never imports them.

Permissions: the model's change permission (a staff login is the admin's own rule), whatever
the page's read-only fields; the service still checks its own rules.
"""

from collections.abc import Callable
from dataclasses import dataclass

from django import forms
from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse

from .admin_forms import FIELD_ALIASES
from .errors import StencilError
from .impacts import Impact


@dataclass(frozen=True)
class ObjectAction:
    """One button on an object's page.

    `run(request, obj, data)` calls one service and returns the success message (or, for a
    page whose script asks for JSON, a dict answered as JSON); `data` is the form's cleaned
    data ({} without a form). `form(obj)` returns the form class asking for input
    (or None). `impact(obj, data)` describes what a destructive action affects; its page must be
    confirmed before `run` is called.
    """

    name: str
    label: str
    run: Callable[[HttpRequest, Model, dict], str]
    shown: Callable[[Model], bool] = lambda obj: True
    form: Callable[[Model], type[forms.Form]] | None = None
    impact: Callable[[Model, dict], Impact] | None = None
    help_text: str = ""
    order: int = 100
    # A page of its own (e.g. the upload page, whose script posts the form for JSON).
    page_template: str = ""

    @property
    def danger(self) -> bool:
        return self.impact is not None

    @property
    def asks_first(self) -> bool:
        """Opens a page (a form, or a confirmation) instead of acting on the button's click."""
        return self.form is not None or self.impact is not None


_actions: dict[str, dict[str, ObjectAction]] = {}


def register_action(model: type[Model], action: ObjectAction) -> None:
    """Add (or replace, by name) an action on `model`'s pages; called at admin import time."""
    _actions.setdefault(model._meta.label_lower, {})[action.name] = action


def actions_for(model: type[Model]) -> list[ObjectAction]:
    return sorted(
        _actions.get(model._meta.label_lower, {}).values(), key=lambda a: (a.order, a.label)
    )


def action_named(model: type[Model], name: str) -> ObjectAction | None:
    return _actions.get(model._meta.label_lower, {}).get(name)


def form_errors(form: forms.Form) -> dict[str, list[str]]:
    """A form's errors as JSON: field (or "__all__") -> messages."""
    return {name: [str(message) for message in errors] for name, errors in form.errors.items()}


def error_payload(form: forms.Form | None, error: StencilError) -> dict[str, list[str]]:
    """A service's refusal as JSON, on the form field it names when the form has it."""
    name = field_for_error(form, error) if form is not None else None
    return {name or "__all__": [error.message]}


def field_for_error(form: forms.Form, error: StencilError) -> str | None:
    """The form field a service error names (aliases as on the template forms), or None."""
    name = FIELD_ALIASES.get(error.field or "", error.field)
    return name if name in form.fields else None


class ObjectActionsMixin:
    """Serves `<id>/actions/<name>/` for the registered actions of the admin's model and puts
    their buttons (`object_actions`) in the change page's context."""

    object_action_template = "admin/stencil/object_action.html"
    object_history_template = "admin/stencil/object_history.html"
    history_events_shown = 200

    def history_view(self, request, object_id, extra_context=None):
        """One audit trail: the admin's log entries and the object's events (state changes by
        services, agents and sweeps), newest first."""
        from django.contrib.contenttypes.models import ContentType

        from .selectors import events_visible_to

        content_type = ContentType.objects.get_for_model(self.model)
        events = events_visible_to(request.user).filter(
            content_type=content_type, object_id=unquote(object_id)
        )
        context = {"stencil_events": events[: self.history_events_shown], **(extra_context or {})}
        return super().history_view(request, object_id, context)

    def has_object_action_permission(self, request: HttpRequest, obj: Model) -> bool:
        opts = self.opts
        codename = get_permission_codename("change", opts)
        return request.user.has_perm(f"{opts.app_label}.{codename}")

    def object_action_url(self, obj: Model, name: str) -> str:
        opts = self.opts
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_action", args=[obj.pk, name])

    def object_action_buttons(self, request: HttpRequest, obj: Model) -> list[dict]:
        if obj is None or not self.has_object_action_permission(request, obj):
            return []
        return [
            {
                "name": action.name,
                "label": action.label,
                "url": self.object_action_url(obj, action.name),
                "danger": action.danger,
                "asks_first": action.asks_first,
                "help_text": action.help_text,
            }
            for action in actions_for(self.model)
            if action.shown(obj)
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, unquote(object_id)) if object_id else None
        buttons = self.object_action_buttons(request, obj)
        context = {"object_actions": buttons, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self):
        opts = self.opts
        own = [
            path(
                "<path:object_id>/actions/<slug:name>/",
                self.admin_site.admin_view(self.object_action_view),
                name=f"{opts.app_label}_{opts.model_name}_action",
            )
        ]
        # Before the admin's own patterns: `<path:object_id>/` would swallow these.
        return own + super().get_urls()

    def _change_url(self, obj: Model) -> str:
        opts = self.opts
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])

    def object_action_view(self, request: HttpRequest, object_id: str, name: str) -> HttpResponse:
        """GET: the action's form or confirmation page. POST: validate, confirm, call the
        service, and go back to the object's page with what happened."""
        obj = self.get_object(request, unquote(object_id))
        action = action_named(self.model, name)
        if obj is None or action is None:
            raise Http404(f"no {self.opts.verbose_name} {object_id!r} or no action {name!r}")
        if not self.has_object_action_permission(request, obj):
            raise PermissionDenied
        # `shown` only picks the buttons: the service is the one place that decides, so a
        # stale page's button gets the service's own refusal.
        if request.method != "POST":
            if not action.asks_first:
                return HttpResponse("POST only", status=405)
            form = action.form(obj)() if action.form else None
            return self._action_page(request, obj, action, form, confirming=form is None)
        form = action.form(obj)(request.POST, request.FILES) if action.form else None
        wants_json = request.headers.get("Accept", "").startswith("application/json")
        if form is not None and not form.is_valid():
            if wants_json:
                return JsonResponse(form_errors(form), status=400)
            return self._action_page(request, obj, action, form, status=400)
        data = form.cleaned_data if form is not None else {}
        if action.impact is not None and request.POST.get("confirm") != "yes":
            return self._action_page(request, obj, action, form, confirming=True)
        try:
            done = action.run(request, obj, data)
        except StencilError as error:
            if wants_json:
                return JsonResponse(error_payload(form, error), status=error.status_code)
            if form is not None:
                form.add_error(field_for_error(form, error), error.message)
                return self._action_page(request, obj, action, form, status=error.status_code)
            self.message_user(request, error.message, messages.ERROR)
        else:
            if isinstance(done, dict):
                return JsonResponse(done, status=201)
            self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(self._change_url(obj))

    def _action_page(
        self,
        request: HttpRequest,
        obj: Model,
        action: ObjectAction,
        form: forms.Form | None,
        *,
        confirming: bool = False,
        status: int = 200,
    ) -> HttpResponse:
        impact = None
        if confirming and action.impact is not None:
            impact = action.impact(obj, form.cleaned_data if form is not None else {})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": obj,
            "title": f"{action.label}: {obj}",
            "action": action,
            "form": form,
            "confirming": confirming and impact is not None,
            "impact": impact,
            "change_url": self._change_url(obj),
        }
        page = action.page_template or self.object_action_template
        return TemplateResponse(request, page, context, status=status)


def confirmation_page(
    modeladmin,
    request: HttpRequest,
    *,
    title: str,
    impact: Impact,
    back_url: str,
    label: str,
    hidden: list[tuple[str, object]] | None = None,
) -> HttpResponse:
    """The confirmation page of a destructive action that is not an object's (the list's GC
    sweep, bulk actions): the same page, posting back to the same URL with confirm=yes and
    the `hidden` (name, value) pairs."""
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.opts,
        "title": title,
        "action": {"label": label, "name": "confirm"},
        "confirming": True,
        "impact": impact,
        "change_url": back_url,
        "hidden": hidden or [],
    }
    return TemplateResponse(request, ObjectActionsMixin.object_action_template, context)


def merged_impact(summary: str, impacts: list[Impact]) -> Impact:
    """Several objects' impacts on one confirmation page."""
    return Impact(
        summary=summary,
        affected=[row for impact in impacts for row in impact.affected],
        references=[row for impact in impacts for row in impact.references],
        bytes_freed=sum(impact.bytes_freed for impact in impacts),
        when=" ".join(dict.fromkeys(impact.when for impact in impacts if impact.when)),
        notes=list(dict.fromkeys(note for impact in impacts for note in impact.notes)),
    )


def confirm_bulk_action(
    modeladmin, request: HttpRequest, queryset, *, label: str, impact_of
) -> HttpResponse | None:
    """A destructive list action asks first: None once confirmed (go on), else the page listing
    what every selected object's action affects, posting the same selection back."""
    if request.POST.get("confirm") == "yes":
        return None
    objects = list(queryset.order_by("pk"))
    impact = merged_impact(
        f"{label}: {len(objects)} selected.", [impact_of(obj) for obj in objects]
    )
    opts = modeladmin.opts
    hidden = [("action", request.POST.get("action", "")), ("index", "0")]
    hidden += [(helpers.ACTION_CHECKBOX_NAME, obj.pk) for obj in objects]
    return confirmation_page(
        modeladmin,
        request,
        title=label,
        impact=impact,
        back_url=reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        label=label,
        hidden=hidden,
    )


def service_action(
    name: str,
    label: str,
    call: Callable[..., object],
    *,
    shown: Callable[[Model], bool] = lambda obj: True,
    done: str = "{label}: “{obj}”.",
    **options,
) -> ObjectAction:
    """An action that calls `call(obj=..., actor=..., **data)` and reports `done`."""

    def run(request: HttpRequest, obj: Model, data: dict) -> str:
        result = call(obj=obj, actor=request.user, **data)
        return done.format(label=label, obj=obj, result=result)

    return ObjectAction(name=name, label=label, run=run, shown=shown, **options)
