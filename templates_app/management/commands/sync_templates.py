"""Reconcile image stores and the database by unique name."""

from django.core.management.base import BaseCommand

from templates_app.sync import template_sync


class Command(BaseCommand):
    help = (
        "Template sync: mark copies whose files vanished (and download them again), report "
        "files the database does not know, delete those only with --prune after the grace period."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Report only; change nothing.")
        parser.add_argument("--prune", action="store_true", help="Delete unknown files.")

    def handle(self, *args, dry_run: bool, prune: bool, **options):
        report = template_sync(dry_run=dry_run, prune=prune)
        self.stdout.write(f"stores checked: {report.stores}; copies present: {report.matched}")
        sections = [
            ("missing from store", report.missing),
            ("downloading again", report.redownloading),
            ("downloads left in progress, asked for again", report.resumed),
            ("unknown to the database", report.unknown),
            ("pruned", report.pruned),
            ("unknown but younger than the grace period (kept)", report.kept_young),
        ]
        for title, items in sections:
            self.stdout.write(f"{title}: {len(items)}")
            for item in items:
                self.stdout.write(f"  {item}")
