"""Admin forms for templates. They only collect input: the services validate and save it."""

from django import forms
from django.db import models

from .errors import StencilError
from .models import Template

# Service error fields that have another name (or no field of their own) on the admin forms.
FIELD_ALIASES = {
    "image_format": "format",
    "version.version_name": "version_name",
    "max_templates": "account",
    "max_secondary_bytes": "account",
    "max_vms": "account",
}


def https_by_default(db_field: models.Field, **kwargs) -> forms.Field | None:
    """Form fields for model fields, reading a scheme-less URL as https (Django 6's default)."""
    if isinstance(db_field, models.URLField):
        kwargs["assume_scheme"] = "https"
    return db_field.formfield(**kwargs)


class ServiceErrorFormMixin:
    """Shows the StencilError that a service raised for this input on the field it names.

    The admin sets `service_error` on a subclass of the form when a service refused a first
    submission; validating the same data again then fails with the service's own message.
    """

    service_error: StencilError | None = None

    def clean(self):
        cleaned_data = super().clean()
        if self.service_error is not None:
            self.add_error(self.field_for(self.service_error), self.service_error.message)
        return cleaned_data

    def field_for(self, error: StencilError) -> str | None:
        """The form field an error belongs to, or None for a non-field error."""
        name = FIELD_ALIASES.get(error.field or "", error.field)
        return name if name in self.fields else None


class TemplateRegisterForm(ServiceErrorFormMixin, forms.ModelForm):
    """The add form: what `services.template_register` needs to register a template by URL."""

    class Meta:
        model = Template
        formfield_callback = https_by_default
        fields = (
            "name",
            "display_text",
            "kind",
            "format",
            "url",
            "checksum",
            "os_type",
            "zones",
            "cross_zones",
            "is_public",
            "is_featured",
            "direct_download",
            "primary_policy",
            "account",
        )
        help_texts = {
            "display_text": "Defaults to the name.",
            "url": "http or https URL the image is downloaded from.",
            "checksum": "Optional. {ALGO}hex, e.g. {SHA-256}9f86…; MD5, SHA-1, SHA-256, SHA-512.",
            "zones": "Zones whose image stores get a copy; or tick cross-zones instead.",
            "cross_zones": "Register in every zone.",
            "direct_download": "No secondary copy: hosts download straight into their pools.",
        }

    def register_kwargs(self) -> dict:
        """Keyword arguments for services.template_register, from the cleaned data."""
        data = dict(self.cleaned_data)
        data["image_format"] = data.pop("format")
        data["zones"] = list(data["zones"])
        return data


class TemplateChangeForm(ServiceErrorFormMixin, forms.ModelForm):
    """The change form: what `services.template_update` edits, and the image fields that only
    "Save as new version" may change (a template's own bytes never change)."""

    IMAGE_FIELDS = ("format", "url", "checksum")

    class Meta:
        model = Template
        formfield_callback = https_by_default
        fields = (
            "name",
            "display_text",
            "os_type",
            "is_public",
            "is_featured",
            "version_name",
            "format",
            "url",
            "checksum",
        )
        help_texts = {
            "version_name": "A name for this version, e.g. “with security updates”.",
            "url": "Changed only by “Save as new version”.",
            "format": "Changed only by “Save as new version”.",
            "checksum": "Changed only by “Save as new version”. {ALGO}hex.",
        }

    def update_changes(self) -> dict:
        """Keyword `changes` for services.template_update: the edited fields."""
        return {name: self.cleaned_data[name] for name in self.changed_data}

    def version_kwargs(self) -> dict:
        """Keyword arguments for versions_app.services.template_version_create: the values on
        the page (the edited template's unless changed) and the version name if one was typed."""
        data = {
            name: self.cleaned_data[name]
            for name in self.Meta.fields
            if name in self.cleaned_data and name != "version_name"
        }
        if "format" in data:
            data["image_format"] = data.pop("format")
        changed_name = "version_name" in self.changed_data
        data["version_name"] = self.cleaned_data["version_name"] if changed_name else ""
        return data


class TemplateVersionChoiceField(forms.ModelChoiceField):
    """A template picker that tells versions apart ("ubuntu v3 — name") and offers only ACTIVE
    templates: REMOVED and INACTIVE ones cannot be deployed or built on."""

    default_error_messages = {
        "invalid_choice": "Choose an ACTIVE template: REMOVED and INACTIVE ones cannot be used."
    }

    def __init__(self, **kwargs):
        from .choices import TemplateState

        queryset = Template.objects.filter(state=TemplateState.ACTIVE).order_by(
            "name", "version_number"
        )
        super().__init__(queryset=queryset, **kwargs)

    def label_from_instance(self, obj: Template) -> str:
        return obj.version_label
