from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Exists, OuterRef, QuerySet

from templates_app.models import Account

from .models import VirtualMachine


def vms_visible_to(user: AbstractBaseUser) -> QuerySet[VirtualMachine]:
    queryset = VirtualMachine.objects.select_related("template", "zone", "account", "host", "pool")
    if user.is_staff:
        return queryset
    membership = Account.members.through.objects.filter(
        account_id=OuterRef("account_id"), user_id=user.pk
    )
    return queryset.filter(Exists(membership))
