"""Template sync: reconcile image stores and the database by unique name (seed 003).

Runs when a storage worker starts and from `manage.py sync_templates`. A copy the database has
but the store lacks is marked and downloaded again where a URL exists. Files the database does
not know are reported, and deleted only with `prune` after a grace period. Downloads left in
progress (a killed worker's) are asked for again. A file whose unique
name belongs to a template that is not REMOVED is never deleted.
"""

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction

from . import storepaths
from .choices import DownloadState, ImageStoreState, StoreRefState, TemplateState
from .events import record_copy_event
from .locks import lock_copy
from .models import ImageStore, Template, TemplateStoreRef

logger = logging.getLogger(__name__)


@dataclass
class SyncReport:
    """What a sync found, per category, as store-relative paths or copy descriptions."""

    dry_run: bool
    stores: int = 0
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    redownloading: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    kept_young: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class _Found:
    folder: Path
    unique_name: str | None


def _scan(store: ImageStore) -> list[_Found]:
    """Every template folder on the store, with the unique name its properties declare."""
    base = Path(store.path) / "template" / "tmpl"
    found = []
    for folder in sorted(p for p in base.glob("*/*") if p.is_dir()):
        properties = folder / storepaths.PROPERTIES_NAME
        name = None
        if properties.is_file():
            name = storepaths.read_properties(properties).get("uniquename") or None
        found.append(_Found(folder=folder, unique_name=name))
    return found


@transaction.atomic
def _mark_missing(ref_id: int) -> TemplateStoreRef | None:
    ref = lock_copy(ref_id)
    if ref.state != StoreRefState.READY:
        return None
    before = ref.download_state
    ref.step("lose_bytes")
    ref.error_text = "file missing from the image store (template sync)"
    ref.save()
    record_copy_event(ref, before=before, actor_label="template-sync", reason=ref.error_text)
    return ref


def _check_known_copies(store: ImageStore, report: SyncReport, dry_run: bool) -> None:
    ready = TemplateStoreRef.objects.filter(store=store, state=StoreRefState.READY).select_related(
        "template"
    )
    for ref in ready:
        if (Path(store.path) / ref.install_path).is_file():
            report.matched += 1
            continue
        label = f"{store.name}:{ref.install_path}"
        report.missing.append(label)
        if dry_run or _mark_missing(ref.pk) is None:
            continue
        if ref.template.url and ref.template.state == TemplateState.ACTIVE:
            _redownload(ref.pk)
            report.redownloading.append(label)


def _resume_unfinished(store: ImageStore, report: SyncReport, dry_run: bool) -> None:
    """Downloads left in progress are asked for again. A worker killed mid-download leaves its
    task unacknowledged on the broker (Redis gives it back only after its visibility timeout, an
    hour): the new task waits while another attempt's lease is live, and takes a dead worker's
    copy over once its lease has run out (store_copy_download_task)."""
    unfinished = (
        TemplateStoreRef.objects.filter(
            store=store,
            download_state=DownloadState.DOWNLOAD_IN_PROGRESS,
            template__state=TemplateState.ACTIVE,
        )
        .exclude(template__url="")
        .values_list("pk", "install_path")
    )
    for ref_id, install_path in unfinished:
        report.resumed.append(f"{store.name}:{install_path}")
        if not dry_run:
            _redownload(ref_id)


def _redownload(ref_id: int) -> None:
    from .tasks import store_copy_download_task

    transaction.on_commit(lambda: store_copy_download_task.delay(ref_id=ref_id))


def _check_unknown_files(
    store: ImageStore, report: SyncReport, *, prune: bool, dry_run: bool, grace: float
) -> None:
    found = _scan(store)
    names = {f.unique_name for f in found if f.unique_name}
    known = set(
        Template.objects.filter(unique_name__in=names)
        .exclude(state=TemplateState.REMOVED)
        .values_list("unique_name", flat=True)
    )
    root = Path(store.path)
    own_folders = _folders_of_live_copies(store)
    for item in found:
        if item.unique_name in known or item.folder.relative_to(root) in own_folders:
            continue
        label = f"{store.name}:{item.folder.relative_to(root)}"
        report.unknown.append(label)
        if not prune or dry_run:
            continue
        if time.time() - _newest_mtime(item.folder) < grace:
            report.kept_young.append(label)
            continue
        shutil.rmtree(item.folder, ignore_errors=True)
        report.pruned.append(label)


def _folders_of_live_copies(store: ImageStore) -> set[Path]:
    """Folders of this store's copies whose template is not REMOVED (e.g. a download underway)."""
    rows = (
        TemplateStoreRef.objects.filter(store=store)
        .exclude(template__state=TemplateState.REMOVED)
        .values_list("template__account_id", "template_id")
    )
    return {Path("template", "tmpl", str(account), str(template)) for account, template in rows}


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.iterdir()]
    return max(times)


def template_sync(
    *, dry_run: bool = False, prune: bool = False, store_ids: list[int] | None = None
) -> SyncReport:
    """Reconcile every UP image store with the database (see module docstring)."""
    report = SyncReport(dry_run=dry_run)
    stores = ImageStore.objects.exclude(state=ImageStoreState.DISABLED).select_related("zone")
    if store_ids is not None:
        stores = stores.filter(pk__in=store_ids)
    grace = settings.STENCIL_SYNC_PRUNE_GRACE_SECONDS
    for store in stores:
        if not Path(store.path).is_dir():
            logger.warning("store %s is not reachable at %s; skipped", store, store.path)
            continue
        report.stores += 1
        _check_known_copies(store, report, dry_run)
        _resume_unfinished(store, report, dry_run)
        _check_unknown_files(store, report, prune=prune, dry_run=dry_run, grace=grace)
    return report
