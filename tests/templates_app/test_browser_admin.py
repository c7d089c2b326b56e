"""An operator's round trip in a real browser: register, delete, sweep, through the admin pages."""

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from playwright.sync_api import Page, expect, sync_playwright

from templates_app.choices import TemplateState
from templates_app.models import Account, ImageStore, Template, Zone

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "operator-pw-1"


@pytest.fixture(autouse=True)
def allow_orm_beside_playwright(monkeypatch):
    # Playwright's sync API runs an asyncio loop in this thread; the ORM calls made here are
    # plain synchronous ones, which Django refuses next to a loop unless told they are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def catalogue(tmp_path, settings):
    zone = Zone.objects.create(name="zone-b")
    store_dir = tmp_path / "store-b"
    store_dir.mkdir()
    ImageStore.objects.create(zone=zone, name="store-b", path=str(store_dir))
    Account.objects.create(name="initech")
    get_user_model().objects.create_superuser("operator", "op@example.com", PASSWORD)


@pytest.fixture
def page(live_server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=live_server.url)
            context.set_default_timeout(5_000)
            # A first page loads the theme's stylesheet, scripts and fonts from the test server;
            # on a loaded machine that alone can take seconds.
            context.set_default_navigation_timeout(30_000)
            yield context.new_page()
        finally:
            browser.close()
            # While Playwright's loop runs, Django keys connections by async context, so ORM
            # calls in the test got a connection of their own: close it, or the test database
            # cannot be dropped at the end of the session.
            connections.close_all()


def log_in(page: Page) -> None:
    page.goto("/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#nav-sidebar")).to_contain_text("operator")


def register_template(page: Page) -> None:
    page.goto("/admin/templates_app/template/add/")
    page.fill("#id_name", "fedora-41")
    page.select_option("#id_format", "QCOW2")
    page.fill("#id_url", "https://mirror.example/fedora-41.qcow2")
    page.fill("#id_checksum", "{SHA-256}" + "0f" * 32)
    page.select_option("#id_zones", label="zone-b")
    page.select_option("#id_account", label="initech")
    page.click("button[name=_save]")


def open_from_list(page: Page, name: str) -> None:
    page.locator("#result_list").get_by_role("link", name=name).click()


def state_on_page(page: Page):
    return page.locator(".field-state_badge .readonly")


def test_register_deactivate_and_sweep_from_the_admin(catalogue, page, monkeypatch):
    from templates_app import tasks

    # No worker here: the queued sweep runs in the server's thread once its request commits.
    monkeypatch.setattr(
        tasks.gc_sweep_run_task, "delay", lambda run_id: tasks.gc_sweep_run_task.apply([run_id])
    )
    log_in(page)

    register_template(page)
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    expect(page.locator("#result_list")).to_contain_text("fedora-41")

    open_from_list(page, "fedora-41 v1")
    expect(state_on_page(page)).to_have_text("ACTIVE")
    page.get_by_role("link", name="Deactivate (delete)").click()
    expect(page.locator("#affected")).to_contain_text("ACTIVE → INACTIVE")
    page.get_by_role("button", name="Yes, deactivate (delete)").click()
    expect(page.locator(".messagelist")).to_contain_text("is now INACTIVE")
    expect(state_on_page(page)).to_have_text("INACTIVE")

    page.goto("/admin/templates_app/template/")
    page.get_by_role("button", name="Run GC sweep now").click()
    expect(page.locator("#affected")).to_contain_text("INACTIVE → REMOVED")
    page.get_by_role("button", name="Yes, run gc sweep now").click()
    expect(page.locator(".messagelist")).to_contain_text(
        "GC sweep of every INACTIVE template queued"
    )
    page.locator(".messagelist").get_by_role("link").click()
    expect(page.locator(".field-summary")).to_contain_text("GC sweep removed 1 template(s)")
    expect(page.locator(".field-state")).to_contain_text("Done")

    # REMOVED templates are hidden from the list unless the state filter asks for them.
    page.goto("/admin/templates_app/template/?state=REMOVED")
    open_from_list(page, "fedora-41 v1")
    expect(state_on_page(page)).to_have_text("REMOVED")
    assert Template.objects.get(name="fedora-41").state == TemplateState.REMOVED


def test_dashboard_renders_with_the_theme_served_locally(catalogue, page, tmp_path):
    """The console's first page in a real browser: the theme's CSS and fonts come from this
    server (none from elsewhere), the sidebar is in the operators' order, the figures show."""
    origins = set()
    page.on("request", lambda request: origins.add(request.url.split("/")[2]))
    css = []
    page.on(
        "response",
        lambda response: (
            css.append(response)
            if response.url.endswith(".css") or "/static/unfold/css/" in response.url
            else None
        ),
    )
    log_in(page)

    expect(page).to_have_title("Dashboard | Stencil")
    expect(page.locator("#dash-storage")).to_contain_text("Image store store-b")
    expect(page.locator("#dash-storage")).to_contain_text("used of")
    expect(page.locator("#dash-templates")).to_contain_text("Active")
    assert {
        origin for origin in origins if not origin.startswith(("localhost", "127.0.0.1"))
    } == set()
    assert css and all(response.status == 200 for response in css)
    # The theme's stylesheet applied: the sidebar is laid out by it (fixed, 288 px wide).
    width = page.locator("#nav-sidebar").evaluate("e => getComputedStyle(e).width")
    assert width == "288px"
    sidebar = page.locator("#nav-sidebar").inner_text()
    order = ["Templates & ISOs", "Versions", "VMs & pools", "Hosts & storage", "Accounts", "System"]
    positions = [sidebar.upper().index(title.upper()) for title in order]
    assert positions == sorted(positions)
    # docs/img/console-dashboard.png is this screenshot, copied by hand when the console changes;
    # a test run leaves the checkout as it was.
    page.screenshot(path=str(tmp_path / "console-dashboard.png"), full_page=True)
