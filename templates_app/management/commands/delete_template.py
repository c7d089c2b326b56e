"""Delete (deactivate) a template: INACTIVE now, removed by the GC sweep when nothing uses it."""

from django.core.management.base import BaseCommand

from templates_app import services
from templates_app.errors import StencilError
from templates_app.references import reference_total

from ._base import command_error, find_template


class Command(BaseCommand):
    help = "Deactivate a template by id or unique name; prints the live references left."

    def add_arguments(self, parser):
        parser.add_argument("template", help="Template id (UUID) or unique name.")
        parser.add_argument("--reason", default="deleted by command")

    def handle(self, *args, template: str, reason: str, **options):
        found = find_template(template)
        try:
            services.template_deactivate(template_id=found.pk, actor=None, reason=reason)
        except StencilError as exc:
            raise command_error(exc) from exc
        references = reference_total(found)
        self.stdout.write(f"{found.uuid} is INACTIVE; {references} live reference(s) hold it")
