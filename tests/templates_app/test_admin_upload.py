"""The admin's upload pages: the fields are posted for a signed URL (JSON, errors by field),
then the bytes go to the upload endpoint as the page's script sends them."""

import subprocess

import pytest
from django.urls import reverse

from templates_app.models import Template, TemplateStoreRef

from .test_uploads import post_bytes

pytestmark = pytest.mark.django_db

UPLOAD = "/admin/templates_app/template/upload/"
JSON = {"HTTP_ACCEPT": "application/json"}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("up") / "u.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(path), "16M"], check=True, capture_output=True
    )
    return path.read_bytes()


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def test_the_upload_page_has_the_form_and_the_script(staff, store):
    html = staff.get(UPLOAD).content.decode()

    assert 'id="stencil-upload-form"' in html and 'type="file"' in html
    assert "/static/stencil/upload.js" in html
    assert UPLOAD in staff.get(reverse("admin:templates_app_template_changelist")).content.decode()


def test_upload_from_the_page_ends_ready(staff, client, zone, store, account, image):
    fields = {"name": "alpine", "kind": "TEMPLATE", "format": "QCOW2", "zone": zone.pk}
    answer = staff.post(UPLOAD, {**fields, "account": account.pk, "size": len(image)}, **JSON)

    assert answer.status_code == 201, answer.content
    params = answer.json()
    template = Template.objects.get(uuid=params["id"])
    assert params["template_url"] == reverse(
        "admin:templates_app_template_change", args=[template.pk]
    )
    account.refresh_from_db()
    assert account.used_secondary_bytes == len(image)

    done = post_bytes(client, params, image)

    assert done.status_code == 201
    ref = TemplateStoreRef.objects.get(template=template)
    assert (ref.download_state, ref.state) == ("UPLOADED", "READY")


def test_bad_fields_are_a_400_naming_them_and_nothing_is_written(staff, zone, store, account):
    missing = staff.post(UPLOAD, {"format": "QCOW2", "zone": zone.pk}, **JSON)
    assert missing.status_code == 400
    assert set(missing.json()) == {"name", "account", "kind"}

    refused = staff.post(
        UPLOAD,
        {"name": "x", "kind": "ISO", "format": "QCOW2", "zone": zone.pk, "account": account.pk},
        **JSON,
    )
    assert refused.status_code == 400
    assert "format" in refused.json(), refused.json()
    assert not Template.objects.exists()


def test_upload_a_new_version_from_its_page(staff, client, register, zone, image):
    base = register(name="alpine")
    url = reverse("admin:templates_app_template_action", args=[base.pk, "upload-version"])
    page = staff.get(url).content.decode()
    assert "/static/stencil/upload.js" in page and 'type="file"' in page

    answer = staff.post(
        url,
        {"version_name": "edge", "zone": zone.pk, "format": "QCOW2", "size": len(image)},
        **JSON,
    )

    assert answer.status_code == 201, answer.content
    version = Template.objects.get(uuid=answer.json()["id"])
    assert (version.base, version.version_number, version.version_name) == (base, 2, "edge")
    assert post_bytes(client, answer.json(), image).status_code == 201
    assert version.store_refs.get().state == "READY"


def test_tenants_cannot_open_the_upload_pages(client, user, register, zone):
    client.force_login(user)
    base = register()

    assert client.get(UPLOAD).status_code == 302
    url = reverse("admin:templates_app_template_action", args=[base.pk, "upload-version"])
    assert client.post(url, {"zone": zone.pk, "format": "QCOW2"}, **JSON).status_code == 302
    assert Template.objects.count() == 1
