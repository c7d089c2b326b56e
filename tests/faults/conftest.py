"""Fixtures of the fault suite and the invariants every case ends with."""

from pathlib import Path

import pytest
from django.db.models import Sum

from agents_app.models import TemplatePoolRef, VirtualMachine
from templates_app.models import Account, GcSweepRun, TemplateStoreRef

from .processes import FaultServer, part_files

IN_PROGRESS = {
    "store copies": (
        TemplateStoreRef,
        "download_state",
        ["DOWNLOAD_IN_PROGRESS", "UPLOAD_IN_PROGRESS"],
    ),
    "store copy states": (TemplateStoreRef, "state", ["CREATING", "DESTROYING"]),
    "pool copies": (TemplatePoolRef, "state", ["DOWNLOAD_IN_PROGRESS", "EVICTING"]),
    "VMs": (VirtualMachine, "state", ["STARTING"]),
    "GC sweep runs": (GcSweepRun, "state", ["QUEUED", "RUNNING"]),
}


@pytest.fixture
def logs(tmp_path) -> Path:
    folder = tmp_path / "logs"
    folder.mkdir()
    return folder


@pytest.fixture
def server():
    fault_server = FaultServer()
    yield fault_server
    fault_server.close()


@pytest.fixture
def loopback(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True


def stuck_objects() -> dict[str, list[str]]:
    """Objects still in an in-progress state, by kind."""
    found = {}
    for label, (model, name, states) in IN_PROGRESS.items():
        query = model.objects.filter(**{f"{name}__in": states})
        rows = [f"{row}: {getattr(row, name)}" for row in query]
        if rows:
            found[label] = rows
    return found


def assert_nothing_stuck_or_partial(*folders: Path) -> None:
    """The suite's invariants: nothing in progress, no partial file, usage = bytes stored."""
    assert stuck_objects() == {}, "objects left in progress"
    assert part_files(*folders) == [], "partial files left"
    for account in Account.objects.all():
        charged = (
            TemplateStoreRef.objects.filter(template__account=account, state="READY").aggregate(
                total=Sum("charged_bytes")
            )["total"]
            or 0
        )
        stored = sum(
            (Path(ref.store.path) / ref.install_path).stat().st_size
            for ref in TemplateStoreRef.objects.filter(
                template__account=account, state="READY", store__isnull=False
            ).select_related("store")
        )
        assert (account.used_secondary_bytes, charged) == (stored, stored), (
            f"account {account}: used {account.used_secondary_bytes}, charged {charged}, "
            f"stored {stored}"
        )
