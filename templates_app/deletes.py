"""Deleting zones, image stores and accounts: refused with a 409 while anything holds them.

The rows that hold one may live in the apps above (hosts, pools, VMs), which this layer never
imports: Django's delete collector knows every PROTECT relation, so the delete is tried in a
transaction and a ProtectedError becomes InUse naming the holders. The collector raises before
it deletes anything, so a refused delete leaves every row as it was.
"""

from django.db import transaction
from django.db.models import Model, ProtectedError, RestrictedError

from .errors import InUse
from .models import Account, ImageStore, Zone


def _delete_unless_held(model: type[Model], pk: int) -> None:
    with transaction.atomic():
        obj = model.objects.select_for_update().get(pk=pk)
        try:
            obj.delete()
        except (ProtectedError, RestrictedError) as exc:
            held_by = getattr(exc, "protected_objects", None) or exc.restricted_objects
            holders = sorted(held_by, key=lambda row: (type(row).__name__, row.pk))
            raise InUse(obj, holders) from exc


def zone_delete(*, zone_id: int) -> None:
    """Delete a zone that no image store, host, pool, VM or certificate is in."""
    _delete_unless_held(Zone, zone_id)


def image_store_delete(*, store_id: int) -> None:
    """Delete an image store that holds no template copy record."""
    _delete_unless_held(ImageStore, store_id)


def account_delete(*, account_id: int) -> None:
    """Delete an account that owns no template, VM or VM pool."""
    _delete_unless_held(Account, account_id)
