"""Launch permissions (CloudStack's updateTemplatePermissions): the owner shares a template with
other accounts, which may then see and deploy it (templatefilter=sharedexecutable) but never
edit, delete or version it."""

from enum import StrEnum

from django.db import transaction

from .errors import InvalidInput
from .events import record_event
from .locks import lock_template
from .models import Account, Template


class PermissionOp(StrEnum):
    ADD = "add"
    REMOVE = "remove"
    RESET = "reset"


def may_manage(actor, template: Template) -> bool:
    """The owning account's members and staff."""
    if getattr(actor, "is_staff", False):
        return True
    return template.account.members.filter(pk=actor.pk).exists()


@transaction.atomic
def template_permissions_update(
    *, template_id: int, actor, op: str, accounts: list[Account]
) -> Template:
    """add / remove the accounts, or reset (share with nobody). The owner's own account is
    never in the list (it owns the template)."""
    if op not in PermissionOp.__members__.values():
        raise InvalidInput(f"op must be one of {', '.join(PermissionOp)}", field="op")
    template = lock_template(template_id)
    if not may_manage(actor, template):
        raise InvalidInput(
            "only the template's account (or an administrator) may share it", field="template"
        )
    if op != PermissionOp.RESET and not accounts:
        raise InvalidInput("give at least one account", field="accounts")
    if any(account.pk == template.account_id for account in accounts):
        raise InvalidInput("the template's own account owns it already", field="accounts")
    if op == PermissionOp.ADD:
        template.shared_with.add(*accounts)
    elif op == PermissionOp.REMOVE:
        template.shared_with.remove(*accounts)
    else:
        template.shared_with.clear()
    record_event(
        template,
        from_state=template.state,
        to_state=template.state,
        actor=actor,
        reason=f"launch permissions {op}: {', '.join(a.name for a in accounts) or 'everyone'}",
    )
    return template
