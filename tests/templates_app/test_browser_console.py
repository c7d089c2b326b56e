"""An operator's journeys through the console's pages in headless Chromium: deactivate with
confirmation and reactivate, deploy a VM from the form, upload an image from the browser, and
watch a download's progress move without a reload."""

import hashlib
import re
import subprocess
import threading
import time

import pytest
from django.db import connections
from playwright.sync_api import expect
from werkzeug import Response

from agents_app.agent import heartbeat
from agents_app.models import PrimaryPool, VirtualMachine
from templates_app import services
from templates_app.choices import TemplateState
from templates_app.copies import store_copy_download
from templates_app.models import Account, Template, TemplateStoreRef, Zone

from . import test_browser_admin as browser
from .test_browser_admin import log_in

# The browser, the catalogue (zone-b, store-b, initech, the operator) and the ORM switch.
page = browser.page
catalogue = browser.catalogue
allow_orm_beside_playwright = browser.allow_orm_beside_playwright

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def patient(page):
    # The theme's first page loads its fonts and styles through the live server; on a loaded
    # 2-core machine that can take longer than the shared fixture's 5 s.
    page.set_default_timeout(20_000)


def qcow2(tmp_path, size: str, *, full: bool = False) -> bytes:
    path = tmp_path / f"image-{size}.qcow2"
    options = ["-o", "preallocation=full"] if full else []
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", *options, str(path), size],
        check=True,
        capture_output=True,
    )
    return path.read_bytes()


def registered(name: str, url: str = "https://mirror.example/x.qcow2", **fields) -> Template:
    return services.template_register(
        account=Account.objects.get(name="initech"),
        actor=None,
        name=name,
        image_format="QCOW2",
        url=url,
        zones=[Zone.objects.get(name="zone-b")],
        **fields,
    )


def test_deactivate_with_confirmation_then_reactivate(catalogue, page):
    template = registered("centos-9")
    log_in(page)

    page.goto(f"/admin/templates_app/template/{template.pk}/change/")
    page.get_by_role("link", name="Deactivate (delete)").click()

    expect(page.locator("#impact-summary")).to_contain_text("1 template(s) become INACTIVE")
    expect(page.locator("#affected")).to_contain_text("centos-9 (version 1)")
    expect(page.locator("#when")).to_contain_text("Nothing references it")
    page.get_by_role("link", name="No, take me back").click()
    expect(page.locator(".field-state_badge .readonly")).to_have_text("ACTIVE")

    page.get_by_role("link", name="Deactivate (delete)").click()
    page.get_by_role("button", name="Yes, deactivate (delete)").click()
    expect(page.locator(".messagelist")).to_contain_text("is now INACTIVE")
    expect(page.locator(".field-state_badge .readonly")).to_have_text("INACTIVE")

    page.get_by_role("button", name="Reactivate").click()
    expect(page.locator(".messagelist")).to_contain_text("is now ACTIVE")
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE


def test_deploy_a_vm_from_the_form(catalogue, page):
    template = registered("debian-12")
    zone = Zone.objects.get(name="zone-b")
    host = heartbeat.host_register(name="kvm-b1", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(
        zone=zone, name="pool-b", libvirt_pool_name="pool-b", path="/p"
    )
    pool.hosts.add(host)
    log_in(page)

    page.goto("/admin/agents_app/virtualmachine/")
    page.get_by_role("link", name="Deploy VM").click()
    page.fill("#id_name", "web-1")
    page.select_option("#id_template", label="debian-12 v1")
    page.select_option("#id_zone", label="zone-b")
    page.select_option("#id_account", label="initech")
    page.fill("#id_follow", "latest")
    page.get_by_role("button", name="Deploy VM").click()

    # A stateful VM cannot follow 'latest': the form says so on the field, nothing is made.
    expect(page.locator(".field-follow .errorlist")).to_contain_text("only a stateless VM")
    assert not VirtualMachine.objects.exists()

    page.check("#id_stateless")
    page.get_by_role("button", name="Deploy VM").click()

    expect(page.locator(".messagelist")).to_contain_text("is deploying on kvm-b1")
    expect(page.locator(".field-state .readonly")).to_have_text("Starting")
    vm = VirtualMachine.objects.get(name="web-1")
    assert (vm.template, vm.host, vm.follow_channel) == (template, host, "latest")


def test_upload_an_image_from_the_browser(catalogue, page, tmp_path):
    image = tmp_path / "alpine.qcow2"
    image.write_bytes(qcow2(tmp_path, "16M"))
    log_in(page)

    page.goto("/admin/templates_app/template/")
    page.get_by_role("link", name="Upload template").click()
    page.fill("#id_name", "alpine-3.20")
    page.select_option("#id_zone", label="zone-b")
    page.select_option("#id_account", label="initech")
    page.fill("#id_checksum", "{SHA-256}" + hashlib.sha256(image.read_bytes()).hexdigest())
    page.set_input_files("#id_upload_file", str(image))
    page.get_by_role("button", name="Upload").click()

    expect(page.locator("#upload-status")).to_contain_text("Uploaded: UPLOADED, READY")
    expect(page.locator("#upload-progress")).to_have_attribute("value", "100")
    page.get_by_role("link", name="Open the template").click()
    expect(page.locator("body")).to_contain_text(re.compile("READY|Ready"))
    ref = TemplateStoreRef.objects.get(template__name="alpine-3.20")
    assert (ref.download_state, ref.state, ref.physical_size) == (
        "UPLOADED",
        "READY",
        image.stat().st_size,
    )


def test_upload_page_names_the_missing_file(catalogue, page, tmp_path):
    log_in(page)
    page.goto("/admin/templates_app/template/upload/")
    page.fill("#id_name", "nothing")
    page.get_by_role("button", name="Upload").click()

    expect(page.locator(".field-upload_file .errorlist")).to_contain_text("Choose a file")

    # With a file, the server's rules come back on their fields; nothing is written.
    image = tmp_path / "x.qcow2"
    image.write_bytes(qcow2(tmp_path, "1M"))
    page.set_input_files("#id_upload_file", str(image))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".field-zone .errorlist")).to_contain_text("This field is required")
    expect(page.locator(".field-account .errorlist")).to_contain_text("This field is required")
    assert not Template.objects.exists()


def slow_image(data: bytes, chunk: int = 32 * 1024, pause: float = 0.08):
    """A handler that sends the image slowly, with its length known (so percent moves)."""

    def handler(request):
        def body():
            for start in range(0, len(data), chunk):
                time.sleep(pause)
                yield data[start : start + chunk]

        return Response(body(), headers={"Content-Length": str(len(data))})

    return handler


def test_download_progress_moves_without_a_reload(catalogue, page, httpserver, settings, tmp_path):
    settings.STENCIL_URL_ALLOW_LOOPBACK = True
    data = qcow2(tmp_path, "4M", full=True)
    httpserver.expect_request("/slow.qcow2").respond_with_handler(slow_image(data))
    template = registered(
        "slow",
        url=httpserver.url_for("/slow.qcow2"),
        checksum="{SHA-256}" + hashlib.sha256(data).hexdigest(),
    )
    ref = template.store_refs.get()
    log_in(page)

    # The storage worker's work, run here in a thread (the real service, the real HTTP server).
    def download():
        try:
            store_copy_download(ref_id=ref.pk)
        finally:
            connections.close_all()

    worker = threading.Thread(target=download)
    worker.start()
    try:
        page.goto(f"/admin/templates_app/template/{template.pk}/change/")
        page.evaluate("window.notReloaded = true")
        bar = page.locator(f'[data-stencil-progress="store:{ref.pk}"]')
        first = int(bar.locator("progress").get_attribute("value"))  # as the server rendered it
        expect(bar.locator(".stencil-progress-text")).to_contain_text("/s")
        expect(bar.locator(".stencil-progress-text")).to_contain_text("left")
        page.wait_for_function(
            f"document.querySelector('[data-stencil-progress=\"store:{ref.pk}\"] progress')"
            f".value > {first}"
        )
        expect(bar).to_have_attribute("data-active", "0", timeout=30_000)
        expect(bar.locator(".stencil-progress-text")).to_contain_text("DOWNLOADED")
        assert page.evaluate("window.notReloaded") is True, "the page was never reloaded"
    finally:
        worker.join(timeout=30)
    ref.refresh_from_db()
    assert (ref.download_state, ref.state) == ("DOWNLOADED", "READY"), ref.error_text
