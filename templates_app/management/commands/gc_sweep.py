"""Run the GC sweep now; --dry-run lists what would go and what holds the rest."""

from django.core.management.base import BaseCommand

from templates_app import services


class Command(BaseCommand):
    help = "Remove INACTIVE templates that nothing references, and delete their bytes."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args, dry_run: bool, **options):
        result = services.gc_sweep(dry_run=dry_run, actor_label="manage.py gc_sweep")
        if result.skipped:
            self.stdout.write("another sweep is running; nothing done")
            return
        verb = "would remove" if dry_run else "removed"
        self.stdout.write(f"{verb} {result.removed_count} template(s)")
        for row in result.removed:
            self.stdout.write(f"  - {row['id']} {row['name']}")
        self.stdout.write(f"held by live references: {result.held_count}")
        for row in result.held:
            refs = ", ".join(f"{k}={v}" for k, v in row["references"].items())
            self.stdout.write(f"  * {row['id']} {row['name']} ({refs})")
        if not dry_run:
            self.stdout.write(f"store copies deleted: {result.copies_destroyed}")
