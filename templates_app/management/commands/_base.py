"""Shared bits of Stencil's commands: domain errors become CommandError with the field named."""

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from templates_app.errors import StencilError
from templates_app.models import Template


def command_error(exc: StencilError) -> CommandError:
    where = f"{exc.field}: " if exc.field else ""
    return CommandError(f"{where}{exc.message}")


def find_template(ident: str) -> Template:
    """A template by public id (UUID) or unique name."""
    try:
        return Template.objects.get(uuid=ident)
    except (Template.DoesNotExist, ValidationError):
        pass
    try:
        return Template.objects.get(unique_name=ident)
    except Template.DoesNotExist as exc:
        raise CommandError(f"template: no template with id or unique name '{ident}'") from exc
