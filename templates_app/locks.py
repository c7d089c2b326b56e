"""Row locks, always taken in one order: account -> template -> store copy -> VM.

Two flows that take locks in the same order cannot deadlock each other.
"""

from django.db.models import QuerySet

from .models import Account, Template


def lock_account(account_id: int) -> Account:
    return Account.objects.select_for_update().get(pk=account_id)


def lock_template(template_id: int) -> Template:
    return Template.objects.select_for_update().get(pk=template_id)


def lock_templates(template_ids: list[int]) -> QuerySet[Template]:
    """Lock several templates in id order, so batches never cross each other's locks."""
    return Template.objects.select_for_update().filter(pk__in=template_ids).order_by("pk")
