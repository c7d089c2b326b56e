"""Row locks, always taken in one order: account -> template -> store copy -> VM.

Two flows that take locks in the same order cannot deadlock each other.
"""

from django.db import connection
from django.db.models import QuerySet

from .models import Account, Template, TemplateStoreRef


def lock_account(account_id: int) -> Account:
    return Account.objects.select_for_update().get(pk=account_id)


def lock_template(template_id: int) -> Template:
    return Template.objects.select_for_update().get(pk=template_id)


def lock_templates(template_ids: list[int]) -> QuerySet[Template]:
    """Lock several templates in id order, so batches never cross each other's locks."""
    return Template.objects.select_for_update().filter(pk__in=template_ids).order_by("pk")


def lock_copy(ref_id: int) -> TemplateStoreRef:
    """Lock one store copy (not its template or store rows), with both loaded."""
    return (
        TemplateStoreRef.objects.select_for_update(of=("self",))
        .select_related("template", "store")
        .get(pk=ref_id)
    )


def lock_template_shared(template_id: int) -> Template:
    """FOR SHARE: many deploys may hold it at once, but the sweep's and delete's FOR UPDATE wait
    for them (and they for it), so a state check under it stays true until commit."""
    if connection.vendor != "postgresql":
        return lock_template(template_id)
    table = Template._meta.db_table
    for template in Template.objects.raw(
        f'SELECT * FROM "{table}" WHERE "id" = %s FOR SHARE', [template_id]
    ):
        return template
    raise Template.DoesNotExist(f"no template {template_id}")
