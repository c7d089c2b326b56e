"""Create (or keep) the demo: zone `demo`, an image store under the data dir, an admin user, and
a KVM host `demo-kvm` on libvirt's test driver with a real pool directory under the data dir."""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from agents_app.agent import heartbeat, virt
from agents_app.models import Host, PrimaryPool
from templates_app.models import Account, ImageStore, Zone

DEMO_HOST = "demo-kvm"
DEMO_POOL = "demo-pool"


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
        host, pool_path, node_xml = self._demo_host(zone)
        agent_command = (
            f".venv/bin/python manage.py run_agent --name {host.name} --zone {zone.name} "
            f"--libvirt-uri {host.libvirt_uri}"
        )
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
                    f"  Host '{host.name}' ({host.state}) on {host.libvirt_uri} "
                    f"(test driver, node XML {node_xml}), pool '{DEMO_POOL}' at {pool_path}",
                    f"  Agent:     {agent_command}",
                    "",
                ]
            )
        )

    def _demo_host(self, zone: Zone):
        """Host `demo-kvm` on the libvirt test driver, with dir pool `demo-pool` on real disk.

        The node XML is rewritten on every run (the pool's sizes come from its file system);
        the host is registered through the agent service only when it is new or its URI or
        zone changed: its agent (`run_agent`) registers it again and heartbeats when it starts.
        """
        pool_path = settings.DATA_DIR / "pools" / DEMO_POOL
        pool_path.mkdir(parents=True, exist_ok=True)
        node_xml = settings.DATA_DIR / "libvirt" / "demo-node.xml"
        node_xml.parent.mkdir(parents=True, exist_ok=True)
        uri = virt.write_test_node_xml(node_xml, pools={DEMO_POOL: pool_path})
        host = Host.objects.filter(name=DEMO_HOST).first()
        if host is None or host.libvirt_uri != uri or host.zone_id != zone.pk:
            host = heartbeat.host_register(
                name=DEMO_HOST,
                zone=zone,
                libvirt_uri=uri,
                address=host.address if host is not None else "",
            )
        pool, _ = PrimaryPool.objects.get_or_create(
            name=DEMO_POOL,
            defaults={"zone": zone, "libvirt_pool_name": DEMO_POOL, "path": str(pool_path)},
        )
        if (pool.zone_id, pool.libvirt_pool_name, pool.path) != (
            zone.pk,
            DEMO_POOL,
            str(pool_path),
        ):
            pool.zone, pool.libvirt_pool_name, pool.path = zone, DEMO_POOL, str(pool_path)
            pool.save(update_fields=["zone", "libvirt_pool_name", "path"])
        pool.hosts.add(host)
        return host, pool_path, node_xml

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
        # Created 0600: the password is never readable by others, not even for a moment.
        descriptor = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
        secret_file.chmod(0o600)  # a file left by an older run keeps its mode on O_TRUNC
        return password
