"""Check primary pools against the database (run on a host that mounts them)."""

from django.core.management.base import BaseCommand

from agents_app.agent.pool_copies import pool_reconcile
from agents_app.models import PrimaryPool


class Command(BaseCommand):
    help = "Flag pool copies whose files vanished and list files the database does not know."

    def add_arguments(self, parser):
        parser.add_argument("--pool", action="append", default=[], help="Pool name (repeat).")

    def handle(self, *args, pool: list[str], **options):
        pools = PrimaryPool.objects.prefetch_related("hosts").order_by("name")
        if pool:
            pools = pools.filter(name__in=pool)
        for item in pools:
            host = next(iter(item.hosts.all()), None)
            if host is None:
                self.stdout.write(f"{item.name}: no host reaches it; skipped")
                continue
            report = pool_reconcile(pool_id=item.pk, libvirt_uri=host.libvirt_uri)
            self.stdout.write(
                f"{item.name}: {len(report['flagged'])} vanished, {len(report['unknown'])} unknown"
            )
            for path in report["flagged"]:
                self.stdout.write(f"  vanished: {path}")
            for path in report["unknown"]:
                self.stdout.write(f"  unknown:  {path}")
