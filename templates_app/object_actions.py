"""The catalogue's actions on a template's page (templates_app.admin_actions registry):
deactivate (confirmed), reactivate, retry download, share with accounts. Each calls one service.
"""

from django import forms
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.timezone import localtime

from . import extracts, services
from .admin_actions import ObjectAction, register_action, service_action
from .choices import TemplateState
from .copies import retryable_store_copies, template_downloads_retry
from .impacts import template_deactivate_impact
from .launch_permissions import PermissionOp, template_permissions_update
from .models import Account, Template


def _deactivate(*, obj: Template, actor) -> Template:
    return services.template_deactivate(template_id=obj.pk, actor=actor)


def _reactivate(*, obj: Template, actor) -> Template:
    return services.template_reactivate(template_id=obj.pk, actor=actor)


def _retry(*, obj: Template, actor) -> int:
    return len(template_downloads_retry(template_id=obj.pk, actor=actor))


def share_form(template: Template) -> type[forms.Form]:
    class ShareForm(forms.Form):
        op = forms.ChoiceField(
            label="Operation",
            choices=[
                (PermissionOp.ADD, "Share with these accounts"),
                (PermissionOp.REMOVE, "Stop sharing with these accounts"),
                (PermissionOp.RESET, "Share with nobody (reset)"),
            ],
            initial=PermissionOp.ADD,
        )
        accounts = forms.ModelMultipleChoiceField(
            queryset=Account.objects.exclude(pk=template.account_id).order_by("name"),
            required=False,
            help_text=f"Now shared with: {shared_names(template) or 'nobody'}.",
        )

    return ShareForm


def shared_names(template: Template) -> str:
    return ", ".join(template.shared_with.order_by("name").values_list("name", flat=True))


def _share(*, obj: Template, actor, op: str, accounts) -> int:
    template = template_permissions_update(
        template_id=obj.pk, actor=actor, op=op, accounts=list(accounts)
    )
    return template.shared_with.count()


def _is(state: str):
    return lambda template: template.state == state


register_action(
    Template,
    service_action(
        "deactivate",
        "Deactivate (delete)",
        _deactivate,
        shown=_is(TemplateState.ACTIVE),
        impact=template_deactivate_impact,
        done="{label}: template “{obj}” is now INACTIVE.",
        order=90,
    ),
)
register_action(
    Template,
    service_action(
        "reactivate",
        "Reactivate",
        _reactivate,
        shown=_is(TemplateState.INACTIVE),
        done="{label}: template “{obj}” is now ACTIVE.",
        order=10,
    ),
)
register_action(
    Template,
    service_action(
        "retry-download",
        "Retry download",
        _retry,
        shown=lambda t: t.state == TemplateState.ACTIVE and retryable_store_copies(t.pk).exists(),
        done="{label}: {result} failed copy(ies) of “{obj}” queued again.",
        order=20,
    ),
)
register_action(
    Template,
    service_action(
        "share",
        "Share with accounts",
        _share,
        shown=lambda t: t.state != TemplateState.REMOVED,
        form=share_form,
        done="Launch permissions of “{obj}” updated: shared with {result} account(s).",
        help_text="Accounts it is shared with may see and deploy it, never edit or delete it.",
        order=40,
    ),
)


def extract_message(extract: extracts.Extract) -> str:
    if extract.ready:
        until = date_format(localtime(extract.expires_at), "DATETIME_FORMAT")
        return format_html(
            'Download URL, valid until {}: <a href="{}">{}</a>', until, extract.url, extract.url
        )
    return (
        f"Copying the template into an image store of zone {extract.copy.store.zone} "
        f"({extract.copy.download_percent}%): press Extract again once it is READY."
    )


def _extract(request, template: Template, data: dict) -> str:
    """The signed download URL (templates_app.extracts decides who may have it), or the
    progress of the store copy being made first."""
    extract = extracts.template_extract(
        template_id=template.pk, actor=request.user, base_url=request.build_absolute_uri("/")
    )
    return extract_message(extract)


register_action(
    Template,
    ObjectAction(
        name="extract",
        label="Extract",
        run=_extract,
        shown=lambda t: t.state != TemplateState.REMOVED,
        help_text="A time-limited download URL served from an image store.",
        order=50,
    ),
)
