"""A readable table of templates."""

from django.core.management.base import BaseCommand

from templates_app.choices import TemplateState
from templates_app.models import Template
from templates_app.selectors import with_reference_count

COLUMNS = [
    ("ID", 36),
    ("NAME", 28),
    ("KIND", 8),
    ("FORMAT", 6),
    ("STATE", 8),
    ("REFS", 4),
    ("ACCOUNT", 16),
]


class Command(BaseCommand):
    help = "List templates as a table (ACTIVE ones unless --state or --all)."

    def add_arguments(self, parser):
        parser.add_argument("--state", action="append", choices=TemplateState.values)
        parser.add_argument("--all", action="store_true", help="Every state.")
        parser.add_argument("--limit", type=int, default=200)

    def handle(self, *args, state, all: bool, limit: int, **options):
        queryset = with_reference_count(Template.objects.select_related("account"))
        if not all:
            queryset = queryset.filter(state__in=state or [TemplateState.ACTIVE])
        rows = [
            (str(t.uuid), t.name, t.kind, t.format, t.state, str(t.references), t.account.name)
            for t in queryset.order_by("name", "pk")[:limit]
        ]
        self.stdout.write(_line([title for title, _ in COLUMNS]))
        for row in rows:
            self.stdout.write(_line(row))
        self.stdout.write(f"({len(rows)} template(s))")


def _line(values) -> str:
    cells = []
    for value, (_, width) in zip(values, COLUMNS, strict=True):
        text = value if len(value) <= width else value[: width - 1] + "…"
        cells.append(text.ljust(width))
    return "  ".join(cells).rstrip()
