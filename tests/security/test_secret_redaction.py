"""A template's secrets (the signed query string of its URL, its HTTP header values) never
appear in full outside the owning account and staff in the API: not in events, stored errors,
logs, or the admin pages of staff who are not superusers.

The attack: an account registers a public template whose signed URL answers 403 (a real
pytest-httpserver); a second, hostile account and a non-superuser staff user then look
everywhere they can."""

import logging
import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from templates_app.copies import store_copy_download
from templates_app.images.downloader import DownloadError
from templates_app.images.redaction import REDACTED, known_secrets, redact_text
from templates_app.models import Event, TemplateStoreRef

from ..templates_app.factories import UserFactory

pytestmark = pytest.mark.django_db

SIGNATURE = "s3cr3t-sig-0123456789"
TOKEN = "tok-abcdef-123"
API_KEY = "key-456-ghijkl"
PATH = "/private/golden.qcow2"
SECRETS = (SIGNATURE, TOKEN, API_KEY)


@pytest.fixture(autouse=True)
def fast_downloads(settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    settings.STENCIL_DOWNLOAD_BACKOFF_BASE = 0.01
    settings.STENCIL_DOWNLOAD_MAX_ATTEMPTS = 2


@pytest.fixture
def failed(httpserver, register):
    """A public template whose signed URL the server refuses (403): its copy failed."""
    httpserver.expect_request(PATH).respond_with_data("denied", status=403)
    url = httpserver.url_for(PATH) + f"?X-Amz-Signature={SIGNATURE}&X-Amz-Expires=900"
    template = register(
        name="golden",
        url=url,
        is_public=True,
        details=[
            {"key": "HTTP_HEADER", "value": f"Authorization:Bearer {TOKEN}"},
            {"key": "HTTP_HEADER:X-Api-Key", "value": API_KEY},
        ],
    )
    ref = TemplateStoreRef.objects.get(template=template)
    ref = store_copy_download(ref_id=ref.pk)
    assert ref.download_state == "DOWNLOAD_ERROR"
    # The server saw the real request: the secrets were sent, to the origin only.
    request = httpserver.log[0][0]
    assert request.args["X-Amz-Signature"] == SIGNATURE
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    return template


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        at = text.find(secret)
        assert at < 0, f"{secret!r} in {where}: …{text[max(0, at - 600) : at + 100]}…"


def test_the_stored_error_and_the_events_name_the_failure_without_the_secrets(failed):
    ref = TemplateStoreRef.objects.get(template=failed)
    assert "403" in ref.error_text
    assert PATH in ref.error_text  # still says where: scheme, host and path
    assert_no_secret(ref.error_text, "the copy's error_text")
    reasons = list(Event.objects.values_list("reason", flat=True))
    assert any("403" in reason for reason in reasons)
    assert_no_secret(" ".join(reasons), "event reasons")


def test_the_hostile_account_sees_no_secret_in_the_api(failed, other_api, api):
    seen = [
        other_api.get(f"/api/v1/templates/{failed.uuid}/").content.decode(),
        other_api.get("/api/v1/templates/").content.decode(),
        other_api.get("/api/v1/events/").content.decode(),
    ]
    assert PATH in seen[0]
    for text in seen:
        assert_no_secret(text, "the hostile account's API")
    # The owner still sees the URL and headers it registered (and the redacted error).
    own = api.get(f"/api/v1/templates/{failed.uuid}/").content.decode()
    assert SIGNATURE in own and TOKEN in own and API_KEY in own


def test_stored_errors_are_redacted_whoever_writes_them(failed):
    """The error-text fields redact on the way into the database: a queryset update() with a
    raw error (no service in between) stores the redacted text too."""
    raw = f"GET http://127.0.0.1{PATH}?sig={SIGNATURE} returned 403 (Authorization: Bearer {TOKEN})"
    TemplateStoreRef.objects.filter(template=failed).update(error_text=raw)
    stored = TemplateStoreRef.objects.get(template=failed).error_text
    assert stored == f"GET http://127.0.0.1{PATH} returned 403 (Authorization: {REDACTED})"


def test_logs_of_the_failed_download_and_of_celery_tasks_hold_no_secret(
    httpserver, register, caplog
):
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request(PATH).respond_with_data("denied", status=403)
    url = httpserver.url_for(PATH) + f"?sig={SIGNATURE}"
    register(
        name="logged",
        url=url,
        details=[{"key": "HTTP_HEADER:X-Custom", "value": API_KEY}],  # a name no rule knows
    )
    ref = TemplateStoreRef.objects.get(template__name="logged")
    store_copy_download(ref_id=ref.pk)
    # What Celery's tracer logs when a task raises, and a Stencil logger with a traceback.
    error = DownloadError(f"GET {url} returned 403")
    logging.getLogger("celery.app.trace").error(
        "Task %(name)s[%(id)s] raised unexpected: %(exc)r",
        {"name": "templates_app.tasks.store_copy_download_task", "id": "1", "exc": error},
    )
    try:
        raise RuntimeError(f"headers {{'Authorization': 'Bearer {TOKEN}'}} for {url}")
    except RuntimeError:
        logging.getLogger("templates_app.copies").exception("copy %s failed", ref.pk)
    with known_secrets([API_KEY]):
        logging.getLogger("agents_app.agent").warning("sent X-Custom=%s to %s", API_KEY, url)

    assert caplog.records
    text = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert PATH in text
    assert_no_secret(text, "the logs")


@pytest.fixture
def staff_client(db):
    """A staff user who is not a superuser and belongs to no account, with view rights."""
    staff = UserFactory(username="operator", is_staff=True, is_superuser=False)
    staff.user_permissions.set(
        Permission.objects.filter(
            codename__in=[
                "view_template",
                "change_template",
                "view_templatedetail",
                "view_templatestoreref",
                "view_event",
            ]
        )
    )
    client = Client()
    client.force_login(staff)
    return client


def admin_pages(client: Client, template) -> dict[str, str]:
    ref = TemplateStoreRef.objects.get(template=template)
    pages = {
        "template": f"/admin/templates_app/template/{template.pk}/change/",
        "copy": f"/admin/templates_app/templatestoreref/{ref.pk}/change/",
        "copies": "/admin/templates_app/templatestoreref/",
        "events": "/admin/templates_app/event/",
    }
    seen = {}
    for name, url in pages.items():
        response = client.get(url)
        assert response.status_code == 200, (name, response.status_code)
        seen[name] = response.content.decode()
    return seen


def test_staff_who_are_not_superusers_see_no_secret_in_the_admin(failed, staff_client):
    pages = admin_pages(staff_client, failed)
    for name, html in pages.items():
        assert_no_secret(html, f"the admin's {name} page")
    page = pages["template"]
    assert PATH in page  # the URL without its query string
    assert "Authorization:(hidden)" in page and "X-Api-Key" in page  # header names stay
    assert 'name="url"' not in page  # no form field holds the secret


def test_superusers_and_the_owners_staff_see_the_secrets_in_the_admin(
    failed, admin_user, staff_client, account
):
    client = Client()
    client.force_login(admin_user)
    page = admin_pages(client, failed)["template"]
    assert SIGNATURE in page and TOKEN in page and API_KEY in page
    operator = UserFactory(username="operator")
    account.members.add(operator)
    page = admin_pages(staff_client, failed)["template"]
    assert SIGNATURE in page.replace("&amp;", "&") and TOKEN in page


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET https://u:pw@h.example/a/b.qcow2?sig=x#f failed",
            "GET https://h.example/a/b.qcow2 failed",
        ),
        ("see http://h.example/plain.iso.", "see http://h.example/plain.iso."),
        ('"POST /upload/1?sig=abc HTTP/1.1" 403', '"POST /upload/1 HTTP/1.1" 403'),
        ("is it? yes / no?", "is it? yes / no?"),
        ("Authorization: Bearer abc def", f"Authorization: {REDACTED}"),
        ("{'Cookie': 'sid=1', 'Accept': '*/*'}", f"{{'Cookie': '{REDACTED}', 'Accept': '*/*'}}"),
        ("X-Auth-Token=abc; other", f"X-Auth-Token={REDACTED}; other"),
        ("checksum mismatch: expected {SHA-256}ab", "checksum mismatch: expected {SHA-256}ab"),
    ],
)
def test_redact_text(text, expected):
    assert redact_text(text) == expected
    assert redact_text(expected) == expected  # redacting twice changes nothing


def test_known_secrets_are_hidden_whatever_they_are_called():
    with known_secrets(["opaque-value-1"]):
        assert redact_text("X-Weird: opaque-value-1") == f"X-Weird: {REDACTED}"
    assert redact_text("X-Weird: opaque-value-1") == "X-Weird: opaque-value-1"
    assert re.fullmatch(r"ab", redact_text("ab", secrets=["ab"]))  # too short to replace
