"""The template list's "Upload template" page: the fields come here (JSON back: the signed
upload parameters from `uploads.template_upload_params`, or errors by field), and the page's
script (static/stencil/upload.js) streams the file to the signed URL with a progress bar."""

from django import forms
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse

from . import uploads
from .admin_actions import error_payload, form_errors
from .choices import TemplateFormat, TemplateKind
from .errors import StencilError
from .models import Account, Template, Zone


class UploadForm(forms.Form):
    """What `template_upload_params` needs; the size is the chosen file's, set by the script."""

    name = forms.CharField(max_length=128)
    display_text = forms.CharField(max_length=4096, required=False)
    kind = forms.ChoiceField(choices=TemplateKind.choices, initial=TemplateKind.TEMPLATE)
    format = forms.ChoiceField(choices=TemplateFormat.choices, initial=TemplateFormat.QCOW2)
    zone = forms.ModelChoiceField(queryset=Zone.objects.order_by("name"))
    account = forms.ModelChoiceField(queryset=Account.objects.order_by("name"))
    os_type = forms.CharField(max_length=128, required=False)
    checksum = forms.CharField(
        max_length=160, required=False, help_text="Optional. {ALGO}hex, checked after the upload."
    )
    is_public = forms.BooleanField(required=False)
    size = forms.IntegerField(min_value=0, required=False, widget=forms.HiddenInput)


def upload_answer(params: uploads.UploadParams) -> dict:
    """The JSON the page's script gets: the signed parameters and the new template's page."""
    template = Template.objects.get(uuid=params.id)
    return {
        **params.as_dict(),
        "template_url": reverse("admin:templates_app_template_change", args=[template.pk]),
    }


class UploadPageMixin:
    """Serves `upload/` on the template admin."""

    upload_template = "admin/stencil/upload.html"

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path("upload/", self.admin_site.admin_view(self.upload_view), name=f"{prefix}_upload")
        ]
        return own + super().get_urls()

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            context = {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": "Upload a template",
                "form": UploadForm(),
            }
            return TemplateResponse(request, self.upload_template, context)
        form = UploadForm(request.POST)
        if not form.is_valid():
            return JsonResponse(form_errors(form), status=400)
        data = dict(form.cleaned_data)
        try:
            params = uploads.template_upload_params(
                actor=request.user,
                image_format=data.pop("format"),
                base_url=request.build_absolute_uri("/"),
                size=data.pop("size") or 0,
                **data,
            )
        except StencilError as error:
            return JsonResponse(error_payload(form, error), status=error.status_code)
        return JsonResponse(upload_answer(params), status=201)
