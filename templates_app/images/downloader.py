"""Streaming HTTP(S) download into a file: checked URLs, resume, retries, hashing in one pass.

Every outbound request (the first one and each redirect) goes through `urlsafety.validate_url`,
and the connection goes to the address that was checked, with the original Host header and TLS
server name. The body lands in a temporary file next to the destination; a thread of its own
hashes it while the network thread reads on (hashlib and socket I/O both release the GIL). A
plain-HTTP body with a Content-Length never enters Python: splice(2) moves it socket -> pipe ->
file in the kernel and the hashing thread reads the file's fresh pages through a mapping, one
copy per byte where curl makes two (docs/benchmarks.md, "Store download"); TLS and chunked
bodies are read into buffers that the hashing thread takes in turn. The
file is renamed into place only when complete, checksum-verified and fsynced; after any failure
nothing is left behind.

Stdlib only (http.client, ssl): no shell, no third-party HTTP client.
"""

import contextlib
import errno
import fcntl
import hashlib
import http.client
import logging
import mmap
import os
import queue
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

from .checksums import HASHLIB_NAMES, normalize_checksum, split_checksum
from .headers import BadHeader, check_header
from .redaction import redact_url  # noqa: F401 (also imported from here)
from .urlsafety import HostNotResolved, ResolvedTarget, validate_url

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # 1 MiB per read, write and hash update
QUEUE_DEPTH = 4  # chunks waiting for the hashing thread; memory stays ~(QUEUE_DEPTH + 2) MiB
# Plain HTTP bodies move socket -> pipe -> file inside the kernel (splice(2)) and are hashed from
# the file's pages: one copy of each byte instead of two, and none through Python's buffers.
SPLICE_WINDOW = 1 << 20  # bytes per splice, and per file range handed to the hashing thread
WRITE_BEHIND = 32 << 20  # hashed ranges this far back are on disk: their pages are dropped
USER_AGENT = "stencil-downloader/1"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Statuses that say "try again later" although they are 4xx; curl --retry agrees.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})


# What a connection that gave no HTTP response says, whatever the reason: refused, reset, timed
# out, TLS or bytes that are not HTTP. One text for all, so that the registration check (which a
# tenant can aim at any allowed address and port) cannot tell a closed port from a filtered one
# or from a service that speaks something else: it must not be a port scanner.
NO_HTTP_ANSWER = "no HTTP answer (connection refused, reset, timed out or not HTTP)"
_ALGO_BY_HASHLIB = {name: algo for algo, name in HASHLIB_NAMES.items()}


def headers_for_redirect(headers: dict[str, str], *, same_origin: bool) -> dict[str, str]:
    """The caller's headers were meant for the URL's origin (tokens, API keys, cookies): none
    of them follows a redirect to another origin; the downloader's own headers still go."""
    return dict(headers) if same_origin else {}


ProgressCallback = Callable[[int, int | None], None]


class DownloadError(Exception):
    """A download that failed. `retryable` says whether trying later may succeed.

    `status` is the HTTP status when a response said so; `retry_after` the seconds the server
    asked us to wait (Retry-After), 0 if it did not. `detail` is for the operator's log only
    (the socket error behind NO_HTTP_ANSWER); `message` is what users see.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        status: int | None = None,
        retry_after: float = 0.0,
        detail: str = "",
    ):
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


class ChecksumMismatch(DownloadError):
    """The bytes arrived but do not match the declared checksum (not retried here)."""

    def __init__(self, expected: str, actual: str):
        super().__init__(f"checksum mismatch: expected {expected}, got {actual}", retryable=False)
        self.expected = expected
        self.actual = actual


class StallError(DownloadError):
    """The server sent no byte for stall_timeout seconds."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


@dataclass
class DownloadResult:
    """A completed, verified download. `final_url` has no query string (it may hold secrets)."""

    path: Path
    size: int
    sha256: str
    digest: str
    content_type: str
    final_url: str


def download_to_file(
    url: str,
    dest: Path,
    *,
    checksum: str = "",
    headers: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
    progress_interval: float = 1.0,
    connect_timeout: float = 10,
    read_timeout: float = 30,
    stall_timeout: float = 60,
    max_attempts: int = 4,
    backoff_base: float = 0.5,
    backoff_cap: float = 30,
    max_redirects: int = 5,
    ca_file: str | None = None,
    ca_dir: str | None = None,
    max_bytes: int | None = None,
) -> DownloadResult:
    """Download `url` into `dest` and return what was written, verified.

    `checksum` is `{ALGO}hex` (templates_app.images.checksums); SHA-256 is always computed as well.
    `headers` are sent on every request to the URL's origin, and to no other origin a redirect
    leads to. `progress(bytes_done, total_or_None)` is called at most
    once per `progress_interval` seconds and once at the end; an exception it raises aborts the
    download (a way to cancel).

    `progress` runs in the calling thread (it may use the database). The result's `final_url`
    (after redirects) has no query string, as it may carry a signature; neither do messages.

    Raises UnsafeUrl (from urlsafety) for a URL or redirect the rules refuse, ChecksumMismatch,
    or DownloadError (`retryable` tells the caller whether a later try may work). 5xx, resets,
    timeouts, stalls and short bodies are retried here up to `max_attempts` times with capped
    exponential backoff, resuming with Range when the server allows it.
    """
    dest = Path(dest)
    expected = normalize_checksum(checksum)
    algorithm, expected_hex = split_checksum(expected) if expected else ("sha256", "")
    # Check the first URL before anything touches the disk: UnsafeUrl goes straight out, and so
    # does a name DNS says does not exist. A temporary DNS failure is left to the retries.
    try:
        validate_url(url)
    except HostNotResolved as exc:
        if not exc.temporary:
            raise DownloadError(exc.message) from None
    job = _Download(
        url=url,
        dest=dest,
        headers=_checked_headers(headers or {}),
        progress=progress,
        progress_interval=progress_interval,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        stall_timeout=stall_timeout,
        max_redirects=max_redirects,
        max_bytes=max_bytes,
        ca_file=ca_file,
        ca_dir=ca_dir,
    )
    return job.run(
        algorithm=algorithm,
        expected_hex=expected_hex,
        max_attempts=max(1, max_attempts),
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
    )


def _validate(url: str) -> ResolvedTarget:
    """validate_url, with a DNS failure turned into a DownloadError (retryable if temporary)."""
    try:
        return validate_url(url)
    except HostNotResolved as exc:
        raise DownloadError(exc.message, retryable=exc.temporary) from None


def _checked_headers(headers: dict[str, str]) -> dict[str, str]:
    """The header rules of registration (headers.check_header), again before anything is sent:
    a header stored before a rule existed fails the download with the rule, never a crash."""
    for name, value in headers.items():
        try:
            check_header(name, value)
        except BadHeader as exc:
            raise DownloadError(f"request header refused: {exc.message}") from None
    return dict(headers)


def _tls_context(ca_file: str | None, ca_dir: str | None) -> ssl.SSLContext:
    """System trust store plus the given CA file or folder; hostname checks on."""
    context = ssl.create_default_context()
    if ca_file or ca_dir:
        try:
            context.load_verify_locations(cafile=ca_file, capath=ca_dir)
        except (OSError, ssl.SSLError) as exc:
            raise DownloadError(f"cannot load CA certificates: {_describe(exc)}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a checked address; Host header from the name in the URL."""

    def __init__(self, target: ResolvedTarget, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to a checked address; the certificate is checked against the name in the URL."""

    default_port = http.client.HTTPS_PORT

    def __init__(self, target: ResolvedTarget, timeout: float, tls: ssl.SSLContext):
        super().__init__(target, timeout)
        self._tls = tls

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)


class _Hasher:
    """Hashes chunks in a thread of its own while the caller reads the next ones.

    Buffers circulate between a free list and a bounded work queue, so memory stays constant
    whatever the size of the download and no chunk is allocated after the start.
    """

    _RESET = object()
    _STOP = object()

    def __init__(self, algorithms: list[str]):
        self._algorithms = list(dict.fromkeys(algorithms))  # SHA-256 declared: hash once
        self._hashes = self._new_hashes()
        self._error: BaseException | None = None
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(QUEUE_DEPTH + 2):
            self._free.put(bytearray(CHUNK_SIZE))
        self._work: queue.Queue[object] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._run, name="download-hash", daemon=True)
        self._thread.start()

    def _new_hashes(self) -> dict[str, "hashlib._Hash"]:
        return {name: hashlib.new(name) for name in self._algorithms}

    def take(self) -> bytearray:
        """A free buffer to read into (blocks while all are queued: back-pressure)."""
        return self._free.get()

    def give_back(self, buffer: bytearray) -> None:
        self._free.put(buffer)

    def submit(self, buffer: bytearray, length: int) -> None:
        """Hash buffer[:length]; the buffer returns to the free list afterwards."""
        self._work.put((buffer, length))

    def submit_file_range(self, fd: int, offset: int, length: int) -> None:
        """Hash bytes [offset, offset + length) of the open file `fd`, read from its pages."""
        self._work.put((fd, offset, length))

    def reset(self) -> None:
        """Start over: the bytes submitted so far are discarded (server restarted from zero).

        Waits until the queued work is done: the caller truncates the file next, and a file
        range being hashed must not vanish under its mapping."""
        self._work.put(self._RESET)
        self._work.join()

    def finish(self) -> dict[str, str]:
        """Wait for the queued chunks and return {hashlib name: hex digest}."""
        self.close()
        if self._error is not None:
            raise self._error
        return {name: h.hexdigest() for name, h in self._hashes.items()}

    def close(self) -> None:
        if self._thread.is_alive():
            self._work.put(self._STOP)
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            try:
                if item is self._STOP:
                    return
                if item is self._RESET:
                    self._hashes = self._new_hashes()
                elif len(item) == 3:  # type: ignore[arg-type]
                    self._hash_file_range(*item)  # type: ignore[misc]
                else:
                    self._hash_buffer(*item)  # type: ignore[misc]
            finally:
                self._work.task_done()

    def _hash_buffer(self, buffer: bytearray, length: int) -> None:
        try:
            if self._error is None:
                with memoryview(buffer) as view, view[:length] as chunk:
                    for h in self._hashes.values():
                        h.update(chunk)
        except BaseException as exc:  # reported by finish(); keep draining meanwhile
            self._error = exc
        finally:
            self._free.put(buffer)

    def _hash_file_range(self, fd: int, offset: int, length: int) -> None:
        if self._error is not None:
            return
        # The pages were just written: mapping them hashes the page cache itself, no copy.
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        skip = offset - start
        try:
            with (
                mmap.mmap(
                    fd,
                    skip + length,
                    flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                    prot=mmap.PROT_READ,
                    offset=start,
                ) as mapped,
                memoryview(mapped) as view,
                view[skip:] as chunk,
            ):
                for h in self._hashes.values():
                    h.update(chunk)
            _write_behind(fd, offset, length)
        except BaseException as exc:
            self._error = exc


@dataclass
class _Body:
    """What one response says about the body it carries."""

    start: int  # offset in the file where this body begins
    length: int | None  # bytes this response promises (Content-Length), None if unknown
    total: int | None  # size of the whole file, if known


@dataclass
class _Download:
    """One call of download_to_file: state shared by its attempts."""

    url: str
    dest: Path
    headers: dict[str, str]
    progress: ProgressCallback | None
    progress_interval: float
    connect_timeout: float
    read_timeout: float
    stall_timeout: float
    max_redirects: int
    max_bytes: int | None
    ca_file: str | None
    ca_dir: str | None
    offset: int = 0  # bytes in the temporary file, all of them submitted for hashing
    resumable: bool = False  # the server said it serves byte ranges
    validator: str = ""  # strong ETag or Last-Modified, for If-Range
    content_type: str = ""
    final_url: str = ""
    _tls: ssl.SSLContext | None = None  # built on the first https:// hop (maybe a redirect)
    _fd: int = -1
    _hasher: _Hasher | None = None
    _splice_ok: bool | None = None  # whether the temporary file takes splice(2), once known
    _last_progress_call: float = float("-inf")  # the first chunk reports at once

    def run(
        self,
        *,
        algorithm: str,
        expected_hex: str,
        max_attempts: int,
        backoff_base: float,
        backoff_cap: float,
    ) -> DownloadResult:
        tmp = self._open_temp()
        done = False
        try:
            self._hasher = _Hasher(["sha256", algorithm])
            total: int | None = None
            for attempt in range(1, max_attempts + 1):
                try:
                    total = self._attempt()
                    break
                except DownloadError as exc:
                    if not exc.retryable or attempt == max_attempts:
                        raise
                    delay = min(backoff_cap, backoff_base * 2 ** (attempt - 1))
                    delay = max(delay, min(backoff_cap, exc.retry_after))
                    logger.warning(
                        "download of %s failed (attempt %d of %d): %s%s; retrying in %.2f s",
                        redact_url(self.url),
                        attempt,
                        max_attempts,
                        exc.message,
                        f" [{exc.detail}]" if exc.detail else "",
                        delay,
                    )
                    time.sleep(delay)
            self._report(total, final=True)
            digests = self._hasher.finish()
            sha256 = digests["sha256"]
            algo = _ALGO_BY_HASHLIB[algorithm]
            digest = f"{{{algo}}}{digests[algorithm]}"
            if expected_hex and digests[algorithm] != expected_hex:
                raise ChecksumMismatch(f"{{{algo}}}{expected_hex}", digest)
            self._write_error_wrapped(os.fsync, self._fd)
            os.close(self._fd)
            self._fd = -1
            self._write_error_wrapped(os.replace, tmp, self.dest)
            done = True
            _fsync_dir(self.dest.parent)
            return DownloadResult(
                path=self.dest,
                size=self.offset,
                sha256=sha256,
                digest=digest,
                content_type=self.content_type,
                final_url=self.final_url,
            )
        finally:
            if self._hasher is not None:
                self._hasher.close()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if not done:
                tmp.unlink(missing_ok=True)

    def _open_temp(self) -> Path:
        """`.<name>.part-<random>` next to dest: same file system, so the rename is atomic."""
        tmp = self.dest.parent / f".{self.dest.name}.part-{secrets.token_hex(6)}"
        # Read access too: spliced bodies are hashed from a mapping of this file.
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(tmp, flags, 0o666)  # the umask decides, as for any new file
        except OSError as exc:
            raise DownloadError(f"cannot create {tmp}: {exc.strerror}") from None
        return tmp

    def _write_error_wrapped(self, func: Callable[..., object], *args: object) -> None:
        try:
            func(*args)
        except OSError as exc:
            raise DownloadError(f"cannot write {self.dest}: {exc.strerror}") from None

    def _restart_from_zero(self) -> None:
        """Throw the partial bytes away (and their hash): the next body starts at byte 0."""
        if self.offset:
            self._write_error_wrapped(os.ftruncate, self._fd, 0)
            self._write_error_wrapped(os.lseek, self._fd, 0, os.SEEK_SET)
            assert self._hasher is not None
            self._hasher.reset()
            self.offset = 0

    def _attempt(self) -> int | None:
        """Follow redirects to a body and read it into the file; return the total size."""
        if self.offset and not self.resumable:
            self._restart_from_zero()
        target = _validate(self.url)
        headers = dict(self.headers)
        for _hop in range(self.max_redirects + 1):
            conn = self._connect(target)
            try:
                response = self._request(conn, target, headers)
                if response.status in REDIRECT_STATUSES:
                    location = response.getheader("Location")
                    if not location:
                        raise DownloadError(
                            f"HTTP {response.status} without Location from "
                            f"{redact_url(target.url)}",
                            status=response.status,
                        )
                    # Resolved against the current URL; validated like the first one.
                    next_target = _validate(urljoin(target.url, location.strip()))
                    headers = headers_for_redirect(
                        headers, same_origin=next_target.origin == target.origin
                    )
                    target = next_target
                    continue
                body = self._accept(response, target)
                self.final_url = redact_url(target.url)
                self.content_type = response.getheader("Content-Type", "") or ""
                if self._can_splice(response, target):
                    self._splice_body(response, body, target)
                else:
                    self._read_body(response, body, target)
                return body.total
            finally:
                conn.close()
        raise DownloadError(f"more than {self.max_redirects} redirects from {redact_url(self.url)}")

    def _connect(self, target: ResolvedTarget) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            if self._tls is None:
                self._tls = _tls_context(self.ca_file, self.ca_dir)
            conn = _PinnedHTTPSConnection(target, self.connect_timeout, self._tls)
        else:
            conn = _PinnedHTTPConnection(target, self.connect_timeout)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise DownloadError(
                f"TLS certificate verification failed for {target.host}: {exc.verify_message}"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            conn.close()
            raise _no_http_answer(exc, target) from None
        # Connected: from now on a read waits at most this long for the next byte.
        assert conn.sock is not None
        conn.sock.settimeout(max(0.001, min(self.read_timeout, self.stall_timeout)))
        return conn

    def _request(
        self, conn: http.client.HTTPConnection, target: ResolvedTarget, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        sent = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"}
        sent.update(headers)
        # Bytes as they are stored: no gzip from a helpful server.
        sent["Accept-Encoding"] = "identity"
        if self.offset and self.resumable:
            sent["Range"] = f"bytes={self.offset}-"
            if self.validator:
                sent["If-Range"] = self.validator
        try:
            conn.request("GET", target.request_target, headers=sent)
            return conn.getresponse()
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            # No response yet: reset, timed out waiting for the status line, or not HTTP.
            raise _no_http_answer(exc, target) from None

    def _accept(self, response: http.client.HTTPResponse, target: ResolvedTarget) -> _Body:
        """Decide from status and headers where this body goes; raise for errors."""
        status = response.status
        where = redact_url(target.url)
        if status >= 300 or status < 200:
            reason = f"HTTP {status} {response.reason}".strip()
            if status in (404, 410) or (400 <= status < 500 and status != 416):
                raise DownloadError(
                    f"{reason} for {where}",
                    retryable=status in RETRYABLE_CLIENT_STATUSES,
                    status=status,
                    retry_after=_retry_after(response),
                )
            if status == 416:
                # The range we asked for is not there (file changed or shrank): start over.
                self.resumable = False
                raise DownloadError(f"{reason} for {where}", retryable=True, status=status)
            if status >= 500:
                raise DownloadError(
                    f"{reason} from {where}",
                    retryable=True,
                    status=status,
                    retry_after=_retry_after(response),
                )
            raise DownloadError(f"unexpected {reason} from {where}", status=status)

        # http.client's length: Content-Length, or None when chunked (Transfer-Encoding wins).
        length = response.length
        accept_ranges = (response.getheader("Accept-Ranges") or "").strip().lower()
        etag = (response.getheader("ETag") or "").strip()
        last_modified = (response.getheader("Last-Modified") or "").strip()
        if status == 206:
            start, total = _content_range(response.getheader("Content-Range") or "")
            if start != self.offset:
                # Not the range we asked for; the next attempt starts from zero without Range.
                self.resumable = False
                raise DownloadError(f"unexpected Content-Range from {where}", retryable=True)
            self.resumable = True
            body = _Body(start=start, length=length, total=total)
        else:
            # 200 (or another 2xx) is the whole file, even when we asked for a range.
            self._restart_from_zero()
            self.resumable = accept_ranges == "bytes"
            self.validator = etag if etag and not etag.startswith("W/") else last_modified
            body = _Body(start=0, length=length, total=length)
        if self.max_bytes is not None and body.total is not None and body.total > self.max_bytes:
            raise DownloadError(
                f"{where} is {body.total} bytes, more than the limit of {self.max_bytes}"
            )
        return body

    def _read_body(
        self, response: http.client.HTTPResponse, body: _Body, target: ResolvedTarget
    ) -> None:
        assert self._hasher is not None
        hasher = self._hasher
        received = 0
        last_byte_at = time.monotonic()
        while True:
            buffer = hasher.take()
            try:
                # readinto fills the whole buffer unless the body ends; each socket read waits
                # at most min(read_timeout, stall_timeout) for data.
                with memoryview(buffer) as view:
                    count = response.readinto(view)
            except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
                hasher.give_back(buffer)
                raise self._network_error(exc, target, last_byte_at) from None
            except BaseException:
                hasher.give_back(buffer)
                raise
            if not count:
                hasher.give_back(buffer)
                break
            now = time.monotonic()
            last_byte_at = now
            if self.max_bytes is not None and self.offset + count > self.max_bytes:
                hasher.give_back(buffer)
                raise DownloadError(
                    f"{redact_url(target.url)} sends more than the limit of {self.max_bytes} bytes"
                )
            try:
                _write_all(self._fd, buffer, count)
            except OSError as exc:
                hasher.give_back(buffer)
                raise DownloadError(f"cannot write {self.dest}: {exc.strerror}") from None
            # Written and queued for hashing together: the file and the hash state stay in step,
            # so a retry can resume from self.offset.
            hasher.submit(buffer, count)
            _write_behind(self._fd, self.offset, count)  # hashed from the buffer, not the file
            self.offset += count
            received += count
            if now - self._last_progress_call >= self.progress_interval:
                self._report(body.total, now=now)
        if body.length is not None and received < body.length:
            raise DownloadError(
                f"connection closed after {received} of {body.length} bytes from "
                f"{redact_url(target.url)}",
                retryable=True,
            )

    def _can_splice(self, response: http.client.HTTPResponse, target: ResolvedTarget) -> bool:
        """Plain HTTP with a Content-Length, onto a file system that takes splice(2) writes.
        TLS bodies are decrypted in user space, chunked ones framed there: those are copied."""
        if target.scheme != "http" or response.chunked or response.length is None:
            return False
        if not hasattr(os, "splice") or self._fd < 0:
            return False
        if self._splice_ok is None:
            self._splice_ok = _file_takes_splice(self._fd, self.offset)
        return self._splice_ok

    def _splice_body(
        self, response: http.client.HTTPResponse, body: _Body, target: ResolvedTarget
    ) -> None:
        """The body, socket -> pipe -> file in the kernel; the file's new ranges go to the
        hashing thread as they land. Same rules as _read_body: limits, timeouts, short bodies."""
        assert self._hasher is not None and body.length is not None
        if self.max_bytes is not None and self.offset + body.length > self.max_bytes:
            raise DownloadError(
                f"{redact_url(target.url)} sends more than the limit of {self.max_bytes} bytes"
            )
        sock_fd = response.fileno()  # before a read that could close the response's file
        received, last_byte_at = 0, time.monotonic()
        hashed_to = self.offset
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # the default 64 KiB pipe still works
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, SPLICE_WINDOW)
            received = self._write_buffered_start(response, body.length, target)
            poller = select.poll()
            poller.register(sock_fd, select.POLLIN)
            wait_ms = max(1, int(min(self.read_timeout, self.stall_timeout) * 1000))
            while received < body.length:
                try:
                    count = os.splice(
                        sock_fd, write_end, min(SPLICE_WINDOW, body.length - received)
                    )
                except BlockingIOError:  # the socket has a timeout, so it does not block
                    if not poller.poll(wait_ms):
                        raise self._network_error(TimeoutError(), target, last_byte_at) from None
                    continue
                except OSError as exc:
                    raise self._network_error(exc, target, last_byte_at) from None
                if not count:
                    break
                self._pipe_to_file(read_end, count)
                self.offset += count
                received += count
                now = last_byte_at = time.monotonic()
                if self.offset - hashed_to >= SPLICE_WINDOW:
                    self._hasher.submit_file_range(self._fd, hashed_to, self.offset - hashed_to)
                    hashed_to = self.offset
                if now - self._last_progress_call >= self.progress_interval:
                    self._report(body.total, now=now)
        finally:
            # Everything in the file is queued for hashing, as _read_body keeps it: a retry
            # resumes from self.offset with the hash in step.
            if self.offset > hashed_to:
                self._hasher.submit_file_range(self._fd, hashed_to, self.offset - hashed_to)
            os.close(read_end)
            os.close(write_end)
        if received < body.length:
            raise DownloadError(
                f"connection closed after {received} of {body.length} bytes from "
                f"{redact_url(target.url)}",
                retryable=True,
            )

    def _write_buffered_start(
        self, response: http.client.HTTPResponse, length: int, target: ResolvedTarget
    ) -> int:
        """Body bytes http.client read along with the headers are in its buffer, not in the
        socket: write those first. Returns how many."""
        try:
            pending = response.fp.peek() if length else b""
            start = response.read(min(len(pending), length)) if pending else b""
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise self._network_error(exc, target, time.monotonic()) from None
        if start:
            try:
                _write_all(self._fd, bytearray(start), len(start))
            except OSError as exc:
                raise DownloadError(f"cannot write {self.dest}: {exc.strerror}") from None
            self.offset += len(start)
        return len(start)

    def _pipe_to_file(self, read_end: int, count: int) -> None:
        while count:
            try:
                moved = os.splice(read_end, self._fd, count)
            except OSError as exc:
                raise DownloadError(f"cannot write {self.dest}: {exc.strerror}") from None
            count -= moved

    def _report(self, total: int | None, *, now: float | None = None, final: bool = False) -> None:
        """Call progress; the final call always carries a total (the size, if none was known)."""
        if self.progress is None:
            return
        self._last_progress_call = now if now is not None else time.monotonic()
        self.progress(self.offset, self.offset if final and total is None else total)

    def _network_error(
        self, exc: BaseException, target: ResolvedTarget, since: float
    ) -> DownloadError:
        """Map a socket/HTTP/TLS failure to a DownloadError; they are all worth another try.

        A socket timeout means no byte came for min(read_timeout, stall_timeout) seconds: a stall
        when that is stall_timeout, a read timeout otherwise. `since` (monotonic) is when the
        call began or the last chunk arrived, for the message.
        """
        where = redact_url(target.url)
        if isinstance(exc, TimeoutError | socket.timeout):
            waited = time.monotonic() - since
            if self.stall_timeout <= self.read_timeout:
                return StallError(
                    f"no data from {where} for {self.stall_timeout:g} s "
                    f"({waited:.1f} s since the last chunk)"
                )
            return DownloadError(
                f"read from {where} timed out after {self.read_timeout:g} s", retryable=True
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return DownloadError(f"TLS certificate verification failed for {target.host}")
        return DownloadError(f"transfer from {where} failed: {_describe(exc)}", retryable=True)


# Writes of 1 MiB into the page cache ran at a fifth of the speed of 256 KiB writes on this
# kind of machine (docs/benchmarks.md, Download); reads and hash updates stay at 1 MiB.
WRITE_SLICE = 256 << 10


def _write_all(fd: int, buffer: bytearray, count: int) -> None:
    with memoryview(buffer) as view:
        written = 0
        while written < count:
            written += os.write(fd, view[written : min(count, written + WRITE_SLICE)])


def _write_behind(fd: int, offset: int, length: int) -> None:
    """Start writing the range [offset, offset + length) to disk now, and drop the pages of a
    range written WRITE_BEHIND earlier.

    Otherwise the whole image stays dirty in the page cache until the final fsync, which then
    waits for all of it (0.8-0.9 s at 4 GiB here), and the memory pressure of gigabytes of dirty
    pages makes every later page cost more. POSIX_FADV_DONTNEED starts write-back of dirty
    pages without waiting for it and drops only pages already clean; the bytes are hashed
    before their range gets here."""
    with contextlib.suppress(OSError):  # advice only: a file system may not take it
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        behind = offset - WRITE_BEHIND
        if behind > 0:
            os.posix_fadvise(fd, max(0, behind - length), length, os.POSIX_FADV_DONTNEED)


def _file_takes_splice(fd: int, offset: int) -> bool:
    """Whether splice(2) writes into this file (most local file systems; not every FUSE or
    network one): one byte is spliced at the end of what is written, then cut off again."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(write_end, b"\0")
        os.splice(read_end, fd, 1, offset_dst=offset)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
            raise DownloadError(f"cannot write the download: {exc.strerror}") from None
        return False
    finally:
        os.close(read_end)
        os.close(write_end)
        os.ftruncate(fd, offset)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; some file systems refuse, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _no_http_answer(exc: BaseException, target: ResolvedTarget | None) -> DownloadError:
    """The one error for "no HTTP response came" (see NO_HTTP_ANSWER); the cause goes to
    `detail`, for logs. `target` None: the URL is left out (the registration check's text)."""
    where = f" from {redact_url(target.url)}" if target is not None else ""
    return DownloadError(f"{NO_HTTP_ANSWER}{where}", retryable=True, detail=_describe(exc))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return f"incomplete read ({len(exc.partial)} bytes)"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def _content_range(value: str) -> tuple[int, int | None]:
    """`bytes 100-199/1000` -> (100, 1000); total None for `*`. (-1, None) if unreadable."""
    unit, _, spec = value.strip().partition(" ")
    span, _, total = spec.partition("/")
    first = span.partition("-")[0]
    if unit.lower() != "bytes" or not first.strip().isdigit():
        return -1, None
    total = total.strip()
    return int(first), int(total) if total.isdigit() else None


def _retry_after(response: http.client.HTTPResponse) -> float:
    """Retry-After in seconds (the HTTP-date form is ignored); 0 when absent."""
    value = (response.getheader("Retry-After") or "").strip()
    return float(value) if value.isdigit() else 0.0


# Probing a URL without downloading it (the direct-download URL check) ------------------------

PROBE_BYTES = 512


@dataclass
class ProbeResult:
    """What a URL check found: the final URL (no query string), size, type and first bytes."""

    final_url: str
    status: int
    size: int | None
    content_type: str
    head: bytes


def _probe_once(target: ResolvedTarget, headers: dict[str, str], tls, timeout):
    if target.scheme == "https":
        conn: http.client.HTTPConnection = _PinnedHTTPSConnection(target, timeout, tls)
    else:
        conn = _PinnedHTTPConnection(target, timeout)
    sent = {
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        "Accept-Encoding": "identity",
        "Connection": "close",
        **headers,
        "Range": f"bytes=0-{PROBE_BYTES - 1}",
    }
    try:
        conn.request("GET", target.request_target, headers=sent)
        response = conn.getresponse()
        return response, response.read(PROBE_BYTES)
    except ssl.SSLCertVerificationError as exc:
        raise DownloadError(
            f"TLS certificate verification failed for {target.host}: {exc.verify_message}"
        ) from None
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        # Refused, reset, timed out or not HTTP: one text whatever the address and the cause,
        # so the registration check tells a tenant nothing about ports (NO_HTTP_ANSWER).
        logger.info("URL check of %s: %s", redact_url(target.url), _describe(exc))
        raise _no_http_answer(exc, None) from None
    finally:
        conn.close()


def _size_of(response: http.client.HTTPResponse) -> int | None:
    content_range = response.getheader("Content-Range") or ""
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.getheader("Content-Length")
    return int(length) if length and length.isdigit() and response.status == 200 else None


def probe_url(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    ca_file: str | None = None,
    ca_dir: str | None = None,
    timeout: float = 10,
    max_redirects: int = 5,
) -> ProbeResult:
    """Check a URL with a ranged GET of its first bytes: reachability, size (Content-Range), type,
    and the image header (a HEAD would not show it, and many mirrors refuse HEAD anyway).
    Every redirect is validated; credentials stay with their origin."""
    sent = _checked_headers(dict(headers or {}))
    target = _validate(url)
    tls = None
    for _ in range(max_redirects + 1):
        if tls is None and target.scheme == "https":
            tls = _tls_context(ca_file, ca_dir)
        response, body = _probe_once(target, sent, tls, timeout)
        if response.status in REDIRECT_STATUSES:
            location = response.getheader("Location") or ""
            next_target = _validate(urljoin(target.url, location.strip()))
            sent = headers_for_redirect(sent, same_origin=next_target.origin == target.origin)
            target = next_target
            continue
        if response.status >= 400:
            raise DownloadError(
                f"HTTP {response.status} from {redact_url(target.url)}",
                retryable=response.status >= 500,
                status=response.status,
            )
        return ProbeResult(
            final_url=redact_url(target.url),
            status=response.status,
            size=_size_of(response),
            content_type=response.getheader("Content-Type") or "",
            head=body,
        )
    raise DownloadError(f"more than {max_redirects} redirects from {redact_url(url)}")
