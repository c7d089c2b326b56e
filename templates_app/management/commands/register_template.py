"""Register a template or ISO by URL, like the API's POST /templates/."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from templates_app import services
from templates_app.choices import PrimaryPolicy, TemplateFormat, TemplateKind
from templates_app.errors import StencilError
from templates_app.models import Account, Zone

from ._base import command_error


class Command(BaseCommand):
    help = "Register a template (or ISO) by URL for an account."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--url", required=True)
        parser.add_argument("--format", required=True, choices=TemplateFormat.values)
        parser.add_argument("--account", required=True, help="Account name.")
        parser.add_argument("--zone", action="append", default=[], help="Zone name (repeat).")
        parser.add_argument("--cross-zones", action="store_true")
        parser.add_argument("--kind", default=TemplateKind.TEMPLATE, choices=TemplateKind.values)
        parser.add_argument("--checksum", default="")
        parser.add_argument("--os-type", default="")
        parser.add_argument("--display-text", default="")
        parser.add_argument("--public", action="store_true")
        parser.add_argument("--featured", action="store_true")
        parser.add_argument("--direct-download", action="store_true")
        parser.add_argument("--primary-policy", default="CACHE", choices=PrimaryPolicy.values)
        parser.add_argument("--detail", action="append", default=[], help="KEY=VALUE (repeat).")
        parser.add_argument("--as-user", default=None, help="Recorded as the actor.")

    def handle(self, *args, **opts):
        account = self._get(Account, opts["account"], "account")
        zones = [self._get(Zone, name, "zone") for name in opts["zone"]]
        actor = None
        if opts["as_user"]:
            actor = self._get(get_user_model(), opts["as_user"], "as-user", field="username")
        details = []
        for item in opts["detail"]:
            key, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"detail: '{item}' must be KEY=VALUE")
            details.append({"key": key, "value": value})
        try:
            template = services.template_register(
                account=account,
                actor=actor,
                name=opts["name"],
                image_format=opts["format"],
                url=opts["url"],
                zones=zones,
                cross_zones=opts["cross_zones"],
                kind=opts["kind"],
                display_text=opts["display_text"],
                checksum=opts["checksum"],
                os_type=opts["os_type"],
                is_public=opts["public"],
                is_featured=opts["featured"],
                direct_download=opts["direct_download"],
                primary_policy=opts["primary_policy"],
                details=details,
            )
        except StencilError as exc:
            raise command_error(exc) from exc
        self.stdout.write(f"registered {template.uuid} {template.unique_name} ({template.state})")

    @staticmethod
    def _get(model, value, label, field="name"):
        try:
            return model.objects.get(**{field: value})
        except model.DoesNotExist as exc:
            raise CommandError(f"{label}: no {label} named '{value}'") from exc
