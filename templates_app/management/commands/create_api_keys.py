"""Make (or regenerate) a user's CloudStack API key pair and print it once."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from templates_app.cloudstack.keys import api_keys_create
from templates_app.errors import StencilError

from ._base import command_error


class Command(BaseCommand):
    help = "Create the CloudStack apikey/secretkey pair of USER (print both; the secret only now)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--regenerate", action="store_true", help="Replace an existing pair (the old stops)."
        )

    def handle(self, *args, username: str, regenerate: bool, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"username: no user named '{username}'")
        try:
            pair = api_keys_create(user=user, regenerate=regenerate)
        except StencilError as exc:
            raise command_error(exc) from exc
        self.stdout.write(f"apikey: {pair.api_key}\nsecretkey: {pair.secret_key}")
