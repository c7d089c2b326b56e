"""A readable table of KVM hosts."""

from datetime import datetime

from django.core.management.base import BaseCommand
from django.utils import timezone

from agents_app.selectors import hosts_list

COLUMNS = [
    ("NAME", 24),
    ("ZONE", 16),
    ("STATE", 12),
    ("HEARTBEAT", 12),
    ("POOLS", 28),
    ("LIBVIRT URI", None),  # never cut: it is copied into virsh -c
]


class Command(BaseCommand):
    help = "List KVM hosts: zone, state, age of the last heartbeat, pools, libvirt URI."

    def handle(self, *args, **options):
        now = timezone.now()
        rows = [
            (
                host.name,
                host.zone.name,
                host.state,
                heartbeat_age(host.last_heartbeat_at, now),
                ", ".join(pool.name for pool in host.pools.all()) or "-",
                host.libvirt_uri,
            )
            for host in hosts_list()
        ]
        self.stdout.write(_line([title for title, _ in COLUMNS]))
        for row in rows:
            self.stdout.write(_line(row))
        self.stdout.write(f"({len(rows)} host(s))")


def heartbeat_age(at: datetime | None, now: datetime) -> str:
    """'never', '42s ago', '5m ago', '3h ago' or '2d ago'."""
    if at is None:
        return "never"
    seconds = max(0, int((now - at).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _line(values) -> str:
    cells = []
    for value, (_, width) in zip(values, COLUMNS, strict=True):
        if width is None:
            cells.append(value)
            continue
        text = value if len(value) <= width else value[: width - 1] + "…"
        cells.append(text.ljust(width))
    return "  ".join(cells).rstrip()
