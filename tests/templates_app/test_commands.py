"""Management commands: the same services as the API, errors naming the field."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from templates_app.models import Template

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_register_list_delete_sweep(account, store, make_vm):
    out = run(
        "register_template",
        "--name",
        "alpine",
        "--url",
        "https://m.example/a.qcow2",
        "--format",
        "QCOW2",
        "--account",
        account.name,
        "--zone",
        store.zone.name,
        "--checksum",
        "d41d8cd98f00b204e9800998ecf8427e",
        "--detail",
        "HTTP_HEADER=A:b",
    )
    template = Template.objects.get(name="alpine")
    assert str(template.uuid) in out
    assert template.checksum == "{MD5}d41d8cd98f00b204e9800998ecf8427e"
    assert [(d.key, d.value) for d in template.details.all()] == [("HTTP_HEADER", "A:b")]

    table = run("list_templates")
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "KIND"]
    assert "alpine" in table

    make_vm(template)
    assert "1 live reference(s)" in run("delete_template", template.unique_name)
    assert "alpine" not in run("list_templates")
    assert "INACTIVE" in run("list_templates", "--all")

    dry = run("gc_sweep", "--dry-run")
    assert "would remove 0" in dry
    assert "vm=1" in dry


def test_register_with_bad_checksum_names_the_field(account, store):
    with pytest.raises(CommandError, match="checksum: SHA-256 checksum must have 64"):
        run(
            "register_template",
            "--name",
            "x",
            "--url",
            "https://m.example/a",
            "--format",
            "RAW",
            "--account",
            account.name,
            "--zone",
            store.zone.name,
            "--checksum",
            "{SHA-256}abc",
        )
    assert not Template.objects.exists()


def test_unknown_names_are_errors(account, store):
    with pytest.raises(CommandError, match="zone: no zone named 'nowhere'"):
        run(
            "register_template",
            "--name",
            "x",
            "--url",
            "https://m.example/a",
            "--format",
            "RAW",
            "--account",
            account.name,
            "--zone",
            "nowhere",
        )
    with pytest.raises(CommandError, match="no template with id or unique name"):
        run("delete_template", "not-a-template")


def test_gc_sweep_command_removes(register, user):
    template = register()
    run("delete_template", str(template.uuid))
    out = run("gc_sweep")
    assert "removed 1 template(s)" in out
    template.refresh_from_db()
    assert template.state == "REMOVED"


def test_createdemo_is_idempotent_and_keeps_the_password(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.STENCIL_IMAGE_STORE_ROOT = tmp_path / "stores"
    first = run("createdemo")
    second = run("createdemo")
    password = (tmp_path / "admin-password").read_text().strip()
    assert f"password '{password}'" in first
    assert f"password '{password}'" in second
    assert (tmp_path / "stores" / "demo-store-1").is_dir()
    from django.contrib.auth import authenticate

    assert authenticate(username="admin", password=password) is not None
