"""The versions' actions on a template's page (templates_app.admin_actions registry): register
a new version by URL, or upload a new version's bytes from the browser (the upload page)."""

from django import forms
from django.urls import reverse

from templates_app.admin_actions import ObjectAction, register_action, service_action
from templates_app.choices import TemplateFormat, TemplateState
from templates_app.models import Template, Zone

from . import services


def _active(template: Template) -> bool:
    return template.state == TemplateState.ACTIVE


class NewVersionForm(forms.Form):
    version_name = forms.CharField(max_length=128, required=False)
    url = forms.URLField(
        max_length=2048, assume_scheme="https", help_text="Where the new bytes are."
    )
    format = forms.ChoiceField(choices=TemplateFormat.choices, required=False)
    checksum = forms.CharField(max_length=160, required=False, help_text="Optional. {ALGO}hex.")


def _new_version(*, obj: Template, actor, version_name: str, url: str, format: str, checksum: str):
    fields = {"url": url, "checksum": checksum}
    if format:
        fields["image_format"] = format
    return services.template_version_create(
        base_template_id=obj.lineage_id, actor=actor, version_name=version_name, **fields
    )


def upload_version_form(template: Template) -> type[forms.Form]:
    class UploadVersionForm(forms.Form):
        version_name = forms.CharField(max_length=128, required=False)
        zone = forms.ModelChoiceField(queryset=Zone.objects.order_by("name"))
        format = forms.ChoiceField(choices=TemplateFormat.choices, initial=template.format)
        checksum = forms.CharField(
            max_length=160, required=False, help_text="Optional. {ALGO}hex, checked after upload."
        )
        size = forms.IntegerField(min_value=0, required=False, widget=forms.HiddenInput)

    return UploadVersionForm


def _upload_version(request, template: Template, data: dict) -> dict:
    params = services.template_version_upload_params(
        base_template_id=template.lineage_id,
        actor=request.user,
        zone=data["zone"],
        base_url=request.build_absolute_uri("/"),
        version_name=data["version_name"],
        image_format=data["format"],
        checksum=data["checksum"],
        size=data["size"] or 0,
    )
    version = Template.objects.get(uuid=params.id)
    url = reverse("admin:templates_app_template_change", args=[version.pk])
    return {**params.as_dict(), "template_url": url}


def register_object_actions() -> None:
    register_action(
        Template,
        service_action(
            "new-version",
            "New version",
            _new_version,
            shown=_active,
            form=lambda template: NewVersionForm,
            done="Registered version {result.version_number} of “{result}”; it downloads now.",
            help_text="The next version of the lineage, from a URL; this one is unchanged.",
            order=50,
        ),
    )
    register_action(
        Template,
        ObjectAction(
            name="upload-version",
            label="Upload new version",
            run=_upload_version,
            shown=_active,
            form=upload_version_form,
            page_template="admin/stencil/upload.html",
            help_text="The next version of the lineage, its bytes uploaded from this browser.",
            order=51,
        ),
    )
