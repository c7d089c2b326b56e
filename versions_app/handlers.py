"""What lineages do when the catalogue says something happened (connected in apps.ready)."""

from templates_app.models import Template

from .signals import send_version_usable


def on_store_copy_ready(*, template_id: int, **_ignored) -> None:
    """A copy became READY: if its template is a version, the version may now be 'latest'."""
    row = Template.objects.filter(pk=template_id).values_list("base_id", flat=True).first()
    if row is not None:
        send_version_usable(template_id=template_id, lineage_id=row)
