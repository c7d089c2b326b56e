"""Point a channel of a lineage at a version, or roll it back: the API's and the admin's
promote / rollback (versions_app.channels), for operators and scripts."""

from django.core.management.base import BaseCommand, CommandError

from templates_app.errors import StencilError
from templates_app.management.commands._base import command_error, find_template
from versions_app import channels
from versions_app.channel_followers import channel_followers
from versions_app.selectors import lineage_of


class Command(BaseCommand):
    help = (
        "Promote a version to a channel of its lineage (`promote_version <template> <channel> "
        "--to N`), or move the channel back (`--rollback`); lists the followers rebuilt."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "template", help="Any template of the lineage: id (UUID) or unique name."
        )
        parser.add_argument("channel", help="stable, canary or a channel the owner created.")
        move = parser.add_mutually_exclusive_group(required=True)
        move.add_argument(
            "--to", dest="version", type=int, help="The version number to point it at."
        )
        move.add_argument("--rollback", action="store_true", help="Back to where it was before.")

    def handle(self, *args, template: str, channel: str, version, rollback: bool, **options):
        lineage_id = find_template(template).lineage_id
        try:
            if rollback:
                moved = channels.channel_rollback(template_id=lineage_id, name=channel, actor=None)
            else:
                moved = channels.channel_promote(
                    template_id=lineage_id,
                    name=channel,
                    version_id=self._version_id(lineage_id, version),
                    actor=None,
                )
        except StencilError as exc:
            raise command_error(exc) from exc
        self.stdout.write(f"{moved}: version {moved.version.version_number} ({moved.version.uuid})")
        for follower in channel_followers(lineage_id=lineage_id, channel=channel):
            when = "rebuilt now" if follower.moves_now else "rebuilt when it next stops"
            self.stdout.write(f"  - {follower.kind} {follower.name} ({follower.zone}): {when}")

    def _version_id(self, lineage_id: int, number: int) -> int:
        found = lineage_of(lineage_id).filter(version_number=number).values_list("pk", flat=True)
        if not found:
            raise CommandError(f"version: the lineage has no version {number}")
        return found[0]
