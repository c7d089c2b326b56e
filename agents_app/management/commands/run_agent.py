"""Run a KVM host's agent: register the host, heartbeat, and consume its own Celery queue."""

import logging
import socket
import threading

from celery import current_app
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from agents_app.agent import heartbeat, trust
from templates_app.models import Zone

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Start the agent of one KVM host: a Celery worker on queue host.<name>."
    # As for every worker (project/celery.py): the checks would load the admin, which an agent
    # never serves; they run where Stencil is deployed.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Host name (unique).")
        parser.add_argument("--zone", required=True, help="Zone name.")
        parser.add_argument("--libvirt-uri", required=True, help="e.g. qemu:///system")
        parser.add_argument("--address", default="")
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Worker threads (default: STENCIL_AGENT_CONCURRENCY, 8).",
        )
        parser.add_argument("--loglevel", default="INFO")

    def handle(
        self,
        *args,
        name: str,
        zone: str,
        libvirt_uri: str,
        address: str,
        concurrency: int | None,
        loglevel: str,
        **options,
    ):
        try:
            zone_obj = Zone.objects.get(name=zone)
        except Zone.DoesNotExist as exc:
            raise CommandError(f"zone: no zone named '{zone}'") from exc
        host = heartbeat.host_register(
            name=name,
            zone=zone_obj,
            libvirt_uri=libvirt_uri,
            address=address or socket.gethostname(),
        )
        self.stdout.write(f"host {host.name} is {host.state}; consuming queue {host.queue}")
        resumed = heartbeat.deploys_resume(host_name=name)
        if resumed:
            self.stdout.write(f"re-sent {resumed} deploy(s) this host had not finished")
        self._sync_certificates(name)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(name, stop), daemon=True)
        beat.start()
        # Threads, not forks: the agent keeps one libvirt connection for its whole process.
        # The project's Celery app (project/__init__.py makes it the current one).
        worker = current_app.Worker(
            queues=[host.queue],
            hostname=f"agent-{name}@{socket.gethostname()}",
            pool="threads",
            concurrency=concurrency or settings.STENCIL_AGENT_CONCURRENCY,
            loglevel=loglevel,
        )
        try:
            worker.start()
        finally:
            stop.set()

    @staticmethod
    def _heartbeats(name: str, stop: threading.Event) -> None:
        interval = settings.STENCIL_HEARTBEAT_SECONDS
        while not stop.wait(interval):
            close_old_connections()
            try:
                heartbeat.host_heartbeat(name=name)
                heartbeat.pools_report(host_name=name)
            except Exception:
                # A database or libvirt hiccup must not end the heartbeats for good.
                logger.exception("heartbeat of host %s failed", name)
            try:
                heartbeat.vms_reconcile(host_name=name)
            except Exception:
                logger.exception("VM reconcile of host %s failed", name)
            Command._sync_certificates(name)

    @staticmethod
    def _sync_certificates(name: str) -> None:
        """Install the zone's missing certificates, remove revoked ones; a failure is logged,
        never fatal (the next heartbeat tries again)."""
        try:
            trust.certificates_sync_host(host_name=name)
        except Exception:
            logger.exception("certificate sync of host %s failed", name)
