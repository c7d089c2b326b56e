"""Upload a local image file through the same signed flow as the API, with a progress bar."""

import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from templates_app.choices import TemplateFormat, TemplateKind
from templates_app.errors import StencilError
from templates_app.models import Account, Zone
from templates_app.uploads import template_upload_params, template_upload_receive

from ._base import command_error


class ProgressBar:
    """A one-line text progress bar on stderr (kept off stdout so output stays parseable)."""

    def __init__(self, total: int, stream=None, width: int = 40):
        self.total, self.width = max(total, 1), width
        self.stream = stream or sys.stderr
        self.last_percent = -1

    def __call__(self, done: int) -> None:
        percent = min(100, done * 100 // self.total)
        if percent == self.last_percent:
            return
        self.last_percent = percent
        filled = self.width * percent // 100
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {percent:3d}% {done}/{self.total} bytes")
        if percent == 100:
            self.stream.write("\n")
        self.stream.flush()


class Command(BaseCommand):
    help = "Upload FILE as a new template (signed upload parameters, streamed, verified)."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--name", required=True)
        parser.add_argument("--format", required=True, choices=TemplateFormat.values)
        parser.add_argument("--zone", required=True, help="Zone name.")
        parser.add_argument("--account", required=True, help="Account name.")
        parser.add_argument("--kind", default=TemplateKind.TEMPLATE, choices=TemplateKind.values)
        parser.add_argument("--checksum", default="")
        parser.add_argument("--os-type", default="")
        parser.add_argument("--public", action="store_true")

    def handle(self, *args, file: Path, **opts):
        if not file.is_file():
            raise CommandError(f"file: {file} is not a readable file")
        try:
            account = Account.objects.get(name=opts["account"])
            zone = Zone.objects.get(name=opts["zone"])
        except (Account.DoesNotExist, Zone.DoesNotExist) as exc:
            raise CommandError(f"no such account or zone: {exc}") from exc
        size = file.stat().st_size
        try:
            params = template_upload_params(
                account=account,
                actor=None,
                name=opts["name"],
                image_format=opts["format"],
                zone=zone,
                base_url=settings.STENCIL_PUBLIC_URL,
                os_type=opts["os_type"],
                checksum=opts["checksum"],
                size=size,
                kind=opts["kind"],
                is_public=opts["public"],
            )
            with file.open("rb") as body:
                ref = template_upload_receive(
                    template_uuid=params.id,
                    post_url=params.post_url,
                    metadata=params.metadata,
                    expires=params.expires,
                    signature=params.signature,
                    body=body,
                    progress=ProgressBar(size, stream=self.stderr),
                )
        except StencilError as exc:
            raise command_error(exc) from exc
        self.stdout.write(f"uploaded {params.id} ({ref.download_state}, {ref.size} bytes virtual)")
