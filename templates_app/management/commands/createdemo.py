"""Create (or keep) the demo: zone `demo`, an image store under the data dir, an admin user."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from templates_app.models import Account, ImageStore, Zone


class Command(BaseCommand):
    help = "Create demo data (idempotent) and print the admin credentials and an API token."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, username: str, base_url: str, **options):
        zone, _ = Zone.objects.get_or_create(name="demo", defaults={"description": "Demo zone"})
        store_path = settings.STENCIL_IMAGE_STORE_ROOT / "demo-store-1"
        store_path.mkdir(parents=True, exist_ok=True)
        ImageStore.objects.get_or_create(
            zone=zone, name="demo-store-1", defaults={"path": str(store_path)}
        )
        account, _ = Account.objects.get_or_create(name="admin")
        password = self._admin_password(username)
        user = get_user_model().objects.get(username=username)
        account.members.add(user)
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Stencil demo is ready.",
                    f"  Admin:     {base_url}/admin/   user '{username}', password '{password}'",
                    f"  API docs:  {base_url}/api/docs/",
                    f"  API token: {token.key}",
                    f"  Try:       curl -H 'Authorization: Token {token.key}' "
                    f"{base_url}/api/v1/templates/",
                    f"  Zone 'demo' with image store {store_path}",
                    "",
                ]
            )
        )

    def _admin_password(self, username: str) -> str:
        """Keep the first run's password (in the data dir, mode 0600) so re-runs keep working."""
        secret_file = settings.DATA_DIR / "admin-password"
        users = get_user_model().objects
        if secret_file.exists() and users.filter(username=username).exists():
            return secret_file.read_text().strip()
        password = secrets.token_urlsafe(12)
        user, _ = users.get_or_create(username=username, defaults={"is_staff": True})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        secret_file.write_text(password + "\n")
        secret_file.chmod(0o600)
        return password
