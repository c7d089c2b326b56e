"""Both libvirt backends for tests: the in-process test driver and the real libvirtd.

Use the parametrized fixture in a test module by binding it to a module-level name (pytest finds
fixtures by attribute; a plain import of the name would look unused to ruff):

    from . import libvirt_backends

    libvirt_backend = libvirt_backends.libvirt_backend

    def test_something(libvirt_backend):
        uri, pool_name, pool_dir, domain_type = libvirt_backend

or open one backend yourself with `open_backend("test" | "qemu", tmp_path)`.

The "qemu" backend needs libvirtd on qemu:///system (`make test` starts it through
scripts/ensure-libvirtd.sh). When it does not answer the test FAILS: it never skips, so a
missing daemon cannot pass unnoticed.
"""

from __future__ import annotations

import contextlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import libvirt
import pytest

from agents_app.agent import virt

QEMU_URI = "qemu:///system"
BACKENDS = ("test", "qemu")
BACKEND_IDS = ("test-driver", "libvirtd")


class LibvirtBackend(NamedTuple):
    """Where a test runs: a libvirt URI, an active dir pool and the domain type to define."""

    uri: str
    pool_name: str
    pool_dir: Path
    domain_type: str

    @property
    def kind(self) -> str:
        """'test' for the test driver, 'qemu' for the real daemon."""
        return "test" if self.uri.startswith("test:") else "qemu"

    def connection(self) -> libvirt.virConnect:
        """This process's connection to the backend (the one agents_app.virt uses)."""
        return virt.connection(self.uri)

    def unique(self, name: str) -> str:
        """A domain name that is unique on the daemon (xdist workers share it) and that the
        teardown removes even when the test did not."""
        return f"{self.pool_name}-{name}"


def _uses_dir(dom: libvirt.virDomain, directory: Path) -> bool:
    """Does the domain have a disk under directory?"""
    root = ET.fromstring(dom.XMLDesc(0))
    prefix = str(directory) + "/"
    return any((source.get("file") or "").startswith(prefix) for source in root.iter("source"))


def _remove_domain(dom: libvirt.virDomain) -> None:
    """Power off and undefine, with whatever metadata it has."""
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        )


@contextlib.contextmanager
def _test_driver(tmp_path: Path) -> Iterator[LibvirtBackend]:
    pool_dir = tmp_path / "libvirt-pool"
    pool_dir.mkdir()
    uri = virt.write_test_node_xml(tmp_path / "libvirt-node.xml", pools={"primary": pool_dir})
    try:
        yield LibvirtBackend(uri, "primary", pool_dir, "test")
    finally:
        # The state lives in this connection only; closing it discards it.
        virt.close_connections(uri)


@contextlib.contextmanager
def _real_daemon(tmp_path: Path) -> Iterator[LibvirtBackend]:
    try:
        conn = virt.connection(QEMU_URI)
        conn.getLibVersion()
    except (virt.VirtError, libvirt.libvirtError) as exc:
        pytest.fail(
            f"libvirtd does not answer on {QEMU_URI} ({exc}); start it with "
            "`bash scripts/ensure-libvirtd.sh` (make test does)",
            pytrace=False,
        )
    pool_dir = tmp_path / "libvirt-pool"
    pool_dir.mkdir()
    pool_name = f"stencil-test-{uuid.uuid4().hex[:12]}"
    pool_el = ET.Element("pool", type="dir")
    ET.SubElement(pool_el, "name").text = pool_name
    ET.SubElement(ET.SubElement(pool_el, "target"), "path").text = str(pool_dir)
    pool = conn.storagePoolDefineXML(ET.tostring(pool_el, encoding="unicode"), 0)
    try:
        pool.create(0)
        yield LibvirtBackend(QEMU_URI, pool_name, pool_dir, "qemu")
    finally:
        # The daemon outlives the test: leave no domain and no pool of ours behind. The test may
        # have closed the connection: look everything up again on this process's current one.
        conn = virt.connection(QEMU_URI)
        with contextlib.suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByName(pool_name)
        for dom in conn.listAllDomains(0):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.name().startswith(pool_name) or _uses_dir(dom, pool_dir):
                    _remove_domain(dom)
        with contextlib.suppress(libvirt.libvirtError):
            pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            pool.undefine()


@contextlib.contextmanager
def open_backend(kind: str, tmp_path: Path) -> Iterator[LibvirtBackend]:
    """Set up one backend ("test" or "qemu") with a dir pool under tmp_path; tear it down after."""
    if kind == "test":
        manager = _test_driver(tmp_path)
    elif kind == "qemu":
        manager = _real_daemon(tmp_path)
    else:
        raise ValueError(f"unknown libvirt backend {kind!r}")
    with manager as backend:
        yield backend


@pytest.fixture(params=BACKENDS, ids=BACKEND_IDS)
def libvirt_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LibvirtBackend]:
    """(uri, pool_name, pool_dir, domain_type) of the test driver, then of the real libvirtd."""
    with open_backend(request.param, tmp_path) as backend:
        yield backend
