"""Pre-populate (pin) a template on primary pools: CloudStack's prepareTemplate."""

from django.core.management.base import BaseCommand, CommandError

from agents_app import selectors
from agents_app.models import PrimaryPool
from agents_app.pool_copies import template_prepare
from templates_app.errors import StencilError
from templates_app.management.commands._base import command_error, find_template
from templates_app.models import Zone


class Command(BaseCommand):
    help = (
        "Pin a template on primary pools (by name) or on every pool of a zone; an Up host of "
        "each pool copies it now. Pinned copies keep the template until unpinned."
    )

    def add_arguments(self, parser):
        parser.add_argument("template", help="Template id (UUID) or unique name.")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--pool", action="append", metavar="NAME", help="Repeatable.")
        where.add_argument("--zone", metavar="NAME", help="Every primary pool of this zone.")

    def handle(self, *args, template: str, pool: list[str] | None, zone: str | None, **options):
        found = find_template(template)
        pool_ids = _pool_ids(pool) if pool else None
        zone_id = _zone_id(zone) if zone else None
        try:
            refs = template_prepare(
                template_id=found.pk, pool_ids=pool_ids, zone_id=zone_id, actor=None
            )
        except StencilError as exc:
            raise command_error(exc) from exc
        copies = selectors.pool_copies_of_template(template_id=found.pk).filter(
            pk__in=[ref.pk for ref in refs]
        )
        for copy in copies.order_by("pool__name"):
            self.stdout.write(
                f"{copy.pool.name} ({copy.pool.zone.name}): pinned, {copy.state}, "
                f"{copy.download_percent}%"
            )
        self.stdout.write(f"{found.name} ({found.uuid}) pinned on {len(refs)} pool(s)")


def _pool_ids(names: list[str]) -> list[int]:
    found = dict(PrimaryPool.objects.filter(name__in=names).values_list("name", "pk"))
    unknown = sorted(set(names) - set(found))
    if unknown:
        raise CommandError(f"pool: no primary pool named {', '.join(map(repr, unknown))}")
    return [found[name] for name in names]


def _zone_id(name: str) -> int:
    try:
        return Zone.objects.get(name=name).pk
    except Zone.DoesNotExist as exc:
        raise CommandError(f"zone: no zone named '{name}'") from exc
