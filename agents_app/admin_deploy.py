"""The VM list's "Deploy VM" page: a form calling `services.vm_deploy` (or `vm_create` for a
record with no host yet), errors shown on the fields the service names."""

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from templates_app.admin_actions import field_for_error
from templates_app.choices import TemplateState
from templates_app.errors import StencilError
from templates_app.models import Account, Template, Zone

from . import services
from .choices import LATEST_CHANNEL

# The service's names of the follow inputs, and the limit's, on this form.
DEPLOY_FIELD_ALIASES = {
    services.FOLLOW_FIELD: "follow",
    services.LATEST_FIELD: "follow",
    "template_id": "template",
}


class TemplateChoiceField(forms.ModelChoiceField):
    """Versions told apart: "ubuntu v3 — with updates"."""

    def label_from_instance(self, template: Template) -> str:
        label = f"{template.name} v{template.version_number}"
        return f"{label} — {template.version_name}" if template.version_name else label


class DeployForm(forms.Form):
    name = forms.CharField(max_length=128)
    template = TemplateChoiceField(
        queryset=Template.objects.filter(state=TemplateState.ACTIVE).order_by(
            "name", "version_number"
        )
    )
    zone = forms.ModelChoiceField(queryset=Zone.objects.order_by("name"))
    account = forms.ModelChoiceField(queryset=Account.objects.order_by("name"))
    stateless = forms.BooleanField(
        required=False, help_text="Its disk is thrown away and rebuilt when its version moves."
    )
    follow = forms.CharField(
        max_length=64,
        required=False,
        label="Follow",
        help_text=f"Stateless only: “{LATEST_CHANNEL}” (the newest version) or a channel name; "
        "empty to keep this version.",
    )
    memory_mib = forms.IntegerField(min_value=64, initial=256, label="Memory (MiB)")
    vcpus = forms.IntegerField(min_value=1, max_value=64, initial=1, label="vCPUs")

    def add_service_error(self, error: StencilError) -> None:
        name = DEPLOY_FIELD_ALIASES.get(error.field or "") or field_for_error(self, error)
        self.add_error(name if name in self.fields else None, error.message)


class DeployPageMixin:
    """Serves `deploy/` on the VM admin."""

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path("deploy/", self.admin_site.admin_view(self.deploy_view), name=f"{prefix}_deploy")
        ]
        return own + super().get_urls()

    def may_deploy(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.add_{self.opts.model_name}")

    def deploy_view(self, request: HttpRequest) -> HttpResponse:
        if not self.may_deploy(request):
            raise PermissionDenied
        form = DeployForm(request.POST if request.method == "POST" else None)
        status = 200
        if request.method == "POST":
            if form.is_valid():
                try:
                    vm = self._deploy(request, form.cleaned_data)
                except StencilError as error:
                    form.add_service_error(error)
                    status = error.status_code
                else:
                    url = reverse("admin:agents_app_virtualmachine_change", args=[vm.pk])
                    self.message_user(
                        request, f"VM “{vm}” is deploying on {vm.host}.", messages.SUCCESS
                    )
                    return HttpResponseRedirect(url)
            else:
                status = 400
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Deploy a VM",
            "form": form,
            "action": {"label": "Deploy VM", "name": "deploy"},
            "change_url": reverse("admin:agents_app_virtualmachine_changelist"),
        }
        return TemplateResponse(request, "admin/stencil/object_action.html", context, status=status)

    def _deploy(self, request: HttpRequest, data: dict):
        follow = (data["follow"] or "").strip()
        return services.vm_deploy(
            name=data["name"],
            template_id=data["template"].pk,
            zone=data["zone"],
            account=data["account"],
            actor=request.user,
            memory_mib=data["memory_mib"],
            vcpus=data["vcpus"],
            stateless=data["stateless"],
            use_latest_template_version=follow == LATEST_CHANNEL,
            follow_channel="" if follow == LATEST_CHANNEL else follow,
        )
