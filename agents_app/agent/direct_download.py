"""Direct download (seed 003): a KVM host fetches a template straight into a primary pool.

Downloaders are chosen by scheme through one registry (`DOWNLOADERS`): http and https share
the streaming downloader of templates_app.images.downloader; metalink fetches the metalink
(size-capped), parses it with defusedxml (no DTDs, no entities), checks every mirror with the
URL validator and tries them in priority order. Every byte lands in a hidden temporary file in
the pool, hashed in the same pass; the checksum is verified, the image inspected, then renamed.
"""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from templates_app.images.downloader import (
    ChecksumMismatch,
    DownloadError,
    DownloadResult,
    download_to_file,
    redact_url,
)
from templates_app.images.inspection import ImageRejected, inspect_image
from templates_app.images.metalink import MetalinkRefused, fetch_metalink, scheme_of
from templates_app.images.urlsafety import UnsafeUrl

logger = logging.getLogger(__name__)

CHECKSUM_ATTEMPTS = 3


class DirectDownloadFailed(Exception):
    """Every mirror and attempt failed; `message` says why (shown on the VM and the pool copy).
    `retryable`: another host might succeed (network trouble, not a bad image or checksum)."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass
class Fetched:
    path: Path
    size: int
    virtual_size: int
    sha256: str


def _http_fetch(
    url: str,
    dest: Path,
    *,
    checksum: str,
    headers: dict[str, str],
    ca_dir: str | None,
    progress,
    max_bytes: int | None = None,
) -> DownloadResult:
    return download_to_file(
        url,
        dest,
        checksum=checksum,
        headers=headers,
        ca_dir=ca_dir,
        progress=progress,
        max_bytes=max_bytes,
        connect_timeout=settings.STENCIL_DOWNLOAD_CONNECT_TIMEOUT,
        read_timeout=settings.STENCIL_DOWNLOAD_READ_TIMEOUT,
        stall_timeout=settings.STENCIL_DOWNLOAD_STALL_TIMEOUT,
        max_attempts=settings.STENCIL_DOWNLOAD_MAX_ATTEMPTS,
        backoff_base=settings.STENCIL_DOWNLOAD_BACKOFF_BASE,
    )


def _metalink_fetch(
    url: str,
    dest: Path,
    *,
    checksum: str,
    headers: dict[str, str],
    ca_dir: str | None,
    progress,
    max_bytes: int | None = None,
) -> DownloadResult:
    try:
        mirrors, metalink_checksum = fetch_metalink(
            url,
            scratch_dir=Path(settings.DATA_DIR) / "tmp",
            headers=headers,
            ca_dir=ca_dir,
            backoff_base=settings.STENCIL_DOWNLOAD_BACKOFF_BASE,
        )
    except MetalinkRefused as exc:
        raise DirectDownloadFailed(exc.message) from exc
    errors = []
    for mirror in mirrors:
        try:
            return _http_fetch(
                mirror.url,
                dest,
                checksum=checksum or metalink_checksum,
                headers=headers,
                ca_dir=ca_dir,
                progress=progress,
                max_bytes=max_bytes,
            )
        except ChecksumMismatch:
            raise
        except (DownloadError, UnsafeUrl) as exc:
            errors.append(f"{redact_url(mirror.url)}: {getattr(exc, 'message', exc)}")
    raise DirectDownloadFailed("every metalink mirror failed: " + "; ".join(errors))


Fetcher = Callable[..., DownloadResult]
DOWNLOADERS: dict[str, Fetcher] = {
    "http": _http_fetch,
    "https": _http_fetch,
    "metalink": _metalink_fetch,
}


def fetch_into_pool(
    *,
    url: str,
    pool_dir: Path,
    checksum: str,
    image_format: str,
    headers: dict[str, str] | None = None,
    ca_dir: str | None = None,
    progress=None,
    temp_name: str | None = None,
    room: int | None = None,
    room_name: str = "the pool's free space",
) -> Fetched:
    """Download into a hidden temporary file of the pool, verify, inspect; the caller renames.

    `room` (the pool's free space before the download; None: unbounded) bounds both the bytes
    downloaded and what qemu-img measure says the image takes once written out.
    A checksum mismatch downloads again, up to 3 times. Any failure leaves no file behind.
    `temp_name` names the temporary file after the volume it becomes, so the next attempt can
    find and delete what a killed worker left (`remove_leftovers`).
    """
    fetcher = DOWNLOADERS.get(scheme_of(url))
    if fetcher is None:
        raise DirectDownloadFailed(f"no downloader for scheme '{scheme_of(url)}'")
    temp = pool_dir / (f".{temp_name}.part" if temp_name else f".direct-{uuid.uuid4().hex}.part")
    last_error = ""
    for _ in range(CHECKSUM_ATTEMPTS):
        try:
            result = fetcher(
                url,
                temp,
                checksum=checksum,
                headers=headers or {},
                ca_dir=ca_dir,
                progress=progress,
                max_bytes=room,
            )
            info = inspect_image(temp, image_format, room=room, room_name=room_name)
            return Fetched(
                path=temp, size=result.size, virtual_size=info.virtual_size, sha256=result.sha256
            )
        except ChecksumMismatch as exc:
            last_error = exc.message
            temp.unlink(missing_ok=True)
        except (DownloadError, UnsafeUrl) as exc:
            temp.unlink(missing_ok=True)
            raise DirectDownloadFailed(
                getattr(exc, "message", str(exc)), retryable=getattr(exc, "retryable", False)
            ) from exc
        except ImageRejected as exc:
            temp.unlink(missing_ok=True)
            raise DirectDownloadFailed(f"image rejected: {exc.reason}") from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    raise DirectDownloadFailed(f"{last_error} (after {CHECKSUM_ATTEMPTS} downloads)")


# URL check at registration (run by a random Up host of the zone) ------------------------------

QCOW2_MAGIC = b"QFI\xfb"


def _virtual_size_from_header(head: bytes) -> int | None:
    """qcow2 keeps the virtual size big-endian at offset 24 of its header."""
    if head[:4] == QCOW2_MAGIC and len(head) >= 32:
        return int.from_bytes(head[24:32], "big")
    return None


def _probe(url: str, headers: dict[str, str], ca_dir: str | None) -> dict:
    from templates_app.images.downloader import probe_url

    result = probe_url(
        url, headers=headers, ca_dir=ca_dir, timeout=settings.STENCIL_DOWNLOAD_CONNECT_TIMEOUT
    )
    return {
        "url": result.final_url,
        "size": result.size,
        "content_type": result.content_type,
        "virtual_size": _virtual_size_from_header(result.head),
    }


def url_check(
    *, url: str, headers: dict[str, str] | None = None, ca_dir: str | None = None
) -> dict:
    """What the host sees of a URL: {"ok", "error", "checks": [per URL or mirror], "checksum"}.

    For a metalink every mirror is checked (after the URL validator; .torrent skipped), and the
    metalink's own hash is reported.
    """
    headers = headers or {}
    try:
        if scheme_of(url) != "metalink":
            return {
                "ok": True,
                "error": "",
                "checks": [_probe(url, headers, ca_dir)],
                "checksum": "",
            }
        mirrors, checksum = fetch_metalink(
            url,
            scratch_dir=Path(settings.DATA_DIR) / "tmp",
            headers=headers,
            ca_dir=ca_dir,
            backoff_base=settings.STENCIL_DOWNLOAD_BACKOFF_BASE,
        )
        checks, errors = [], []
        for mirror in mirrors:
            try:
                checks.append(_probe(mirror.url, headers, ca_dir))
            except (DownloadError, UnsafeUrl) as exc:
                errors.append(f"{redact_url(mirror.url)}: {getattr(exc, 'message', exc)}")
        if not checks:
            return {"ok": False, "error": "; ".join(errors), "checks": [], "checksum": checksum}
        return {
            "ok": True,
            "error": "",
            "checks": checks,
            "checksum": checksum,
            "unreachable_mirrors": errors,
        }
    except (DownloadError, UnsafeUrl, DirectDownloadFailed, MetalinkRefused) as exc:
        return {
            "ok": False,
            "error": getattr(exc, "message", str(exc)),
            "checks": [],
            "checksum": "",
        }


def url_verify(
    *,
    url: str,
    checksum: str,
    image_format: str,
    headers: dict[str, str] | None = None,
    ca_dir: str | None = None,
) -> dict:
    """Eager verification (verify=true): stream the whole image, hash and inspect it, keep
    nothing. Beyond CloudStack, which only checks the checksum at deploy time."""
    scratch = Path(settings.DATA_DIR) / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        fetched = fetch_into_pool(
            url=url,
            pool_dir=scratch,
            checksum=checksum,
            image_format=image_format,
            headers=headers,
            ca_dir=ca_dir,
        )
    except DirectDownloadFailed as exc:
        return {"ok": False, "error": exc.message}
    fetched.path.unlink(missing_ok=True)
    return {
        "ok": True,
        "error": "",
        "sha256": fetched.sha256,
        "size": fetched.size,
        "virtual_size": fetched.virtual_size,
    }


def remove_leftovers(pool_dir: Path, volume_name: str) -> list[str]:
    """Delete the temporary files a killed download of this volume left in the pool (ours and
    the downloader's own `.<name>.part-*`). Single flight means nobody else writes them now."""
    removed = []
    for path in pool_dir.iterdir():
        if path.is_file() and path.name.startswith((f".{volume_name}.part", f"..{volume_name}")):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
