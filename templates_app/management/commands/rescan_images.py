"""Re-inspect every READY store copy with today's inspector; quarantine the ones that fail."""

from django.core.management.base import BaseCommand

from templates_app.rescan import rescan_images


class Command(BaseCommand):
    help = (
        "Re-inspect every READY copy on the image stores (run it after an upgrade): copies "
        "that fail become QUARANTINED (bytes kept, not deployable), each with an event."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=200, help="copies read per query")

    def handle(self, *args, batch_size: int, **options):
        result = rescan_images(actor_label="manage.py rescan_images", batch_size=batch_size)
        self.stdout.write(str(result))
        for ref_id in result.quarantined_ids:
            self.stdout.write(f"  quarantined store copy {ref_id}")
