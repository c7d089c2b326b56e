"""Template sync: matches store files to the database by unique name; never deletes known files."""

import os
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from templates_app.copies import store_copy_download
from templates_app.models import TemplateStoreRef
from templates_app.sync import template_sync

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready_template(httpserver, register, settings, tmp_path):
    import subprocess

    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    image = tmp_path / "a.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(image), "1M"], check=True, capture_output=True
    )
    httpserver.expect_request("/a.qcow2").respond_with_data(image.read_bytes())
    template = register(url=httpserver.url_for("/a.qcow2"))
    ref = TemplateStoreRef.objects.get(template=template)
    store_copy_download(ref_id=ref.pk)
    return template


def stray_folder(store, name="stray", age_seconds=0) -> Path:
    folder = Path(store.path) / "template" / "tmpl" / "99" / "999"
    folder.mkdir(parents=True)
    (folder / "x.qcow2").write_bytes(b"junk")
    (folder / "template.properties").write_text(f"uniquename={name}\n")
    old = time.time() - age_seconds
    for path in (folder, *folder.iterdir()):
        os.utime(path, (old, old))
    return folder


def test_known_files_are_matched_and_never_deleted(ready_template, store):
    report = template_sync(prune=True)
    assert report.matched == 1
    assert report.unknown == []
    ref = TemplateStoreRef.objects.get(template=ready_template)
    assert (Path(store.path) / ref.install_path).is_file()


def test_unknown_files_are_reported_and_pruned_only_after_the_grace(store, settings):
    settings.STENCIL_SYNC_PRUNE_GRACE_SECONDS = 3600
    young = stray_folder(store)

    assert template_sync().unknown == ["store-a:template/tmpl/99/999"]
    assert young.exists(), "no prune without --prune"
    report = template_sync(prune=True)
    assert report.kept_young == ["store-a:template/tmpl/99/999"]
    assert young.exists()

    os.utime(young / "x.qcow2", (time.time() - 7200,) * 2)
    os.utime(young / "template.properties", (time.time() - 7200,) * 2)
    os.utime(young, (time.time() - 7200,) * 2)
    assert template_sync(prune=True, dry_run=True).pruned == []
    assert template_sync(prune=True).pruned == ["store-a:template/tmpl/99/999"]
    assert not young.exists()


def test_a_file_named_by_a_known_unique_name_is_kept_wherever_it_is(
    ready_template, store, settings
):
    """The seed's bug: uploads saved under another name were cleaned up by sync."""
    settings.STENCIL_SYNC_PRUNE_GRACE_SECONDS = 0
    folder = stray_folder(store, name=ready_template.unique_name, age_seconds=10)
    assert template_sync(prune=True).pruned == []
    assert folder.exists()


def test_missing_file_is_marked_and_downloaded_again(
    ready_template, store, httpserver, django_capture_on_commit_callbacks, monkeypatch
):
    from templates_app import tasks

    ref = TemplateStoreRef.objects.get(template=ready_template)
    (Path(store.path) / ref.install_path).unlink()
    sent = []
    monkeypatch.setattr(tasks.store_copy_download_task, "delay", lambda **kw: sent.append(kw))

    with django_capture_on_commit_callbacks(execute=True):
        report = template_sync()

    assert report.missing == [f"store-a:{ref.install_path}"]
    ref.refresh_from_db()
    assert (ref.download_state, ref.state) == ("DOWNLOAD_ERROR", "ALLOCATED")
    assert "missing" in ref.error_text
    assert sent == [{"ref_id": ref.pk}]
    store_copy_download(ref_id=ref.pk)
    ref.refresh_from_db()
    assert ref.state == "READY"


def test_dry_run_changes_nothing(ready_template, store):
    ref = TemplateStoreRef.objects.get(template=ready_template)
    (Path(store.path) / ref.install_path).unlink()
    out = StringIO()
    call_command("sync_templates", "--dry-run", stdout=out)
    assert "missing from store: 1" in out.getvalue()
    ref.refresh_from_db()
    assert ref.state == "READY"
