"""download_to_file against real HTTP(S) servers on 127.0.0.1 (pytest-httpserver, trustme CA).

Loopback is opted in with the settings fixture; the rules themselves are in test_urlsafety.
"""

import hashlib
import os
import random
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import trustme
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from templates_app.images import urlsafety
from templates_app.images.downloader import (
    NO_HTTP_ANSWER,
    ChecksumMismatch,
    DownloadError,
    DownloadResult,
    StallError,
    download_to_file,
)
from templates_app.images.urlsafety import DEFAULT_DENIED_NETWORKS, UnsafeUrl

MIB = 1 << 20
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "connect_timeout": 2, "read_timeout": 2}


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    settings.STENCIL_URL_DENIED_NETWORKS = list(DEFAULT_DENIED_NETWORKS)
    settings.STENCIL_URL_ALLOW_LOOPBACK = True


@pytest.fixture
def folder(tmp_path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def _serving(**kwargs):
    """A started server, stopped at the end (a stop takes ~0.5 s: start few of them)."""
    server = HTTPServer(host="127.0.0.1", port=0, **kwargs)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture(scope="module")
def _other_server():
    yield from _serving()


@pytest.fixture
def other_server(_other_server):
    """A second server: another port on 127.0.0.1 is another origin."""
    _other_server.clear()
    return _other_server


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A private CA, its certificate file, and a server certificate for names we pin."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "mirror.stencil.test")
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context, str(ca_file)


@pytest.fixture(scope="module")
def _https_server(tls):
    yield from _serving(ssl_context=tls[0])


@pytest.fixture
def https_server(_https_server):
    _https_server.clear()
    return _https_server


@pytest.fixture
def fake_dns(monkeypatch):
    """Stand-in for DNS, which this sandbox has none of: the listed names resolve to 127.0.0.1.

    Only name resolution is mocked; the connection, TLS and HTTP are real.
    """
    names: set[str] = set()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(urlsafety.socket, "getaddrinfo", getaddrinfo)
    return names


def url(server: HTTPServer, path: str, *, scheme: str = "http", host: str = "127.0.0.1") -> str:
    return f"{scheme}://{host}:{server.port}{path}"


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def requests_seen(server: HTTPServer) -> list[Request]:
    return [request for request, _response in server.log]


# --- success -------------------------------------------------------------------------------


def test_download_with_sha256_checksum(httpserver, folder):
    data = payload(3 * MIB + 12345)
    httpserver.expect_request("/d.qcow2").respond_with_data(
        data, content_type="application/octet-stream"
    )
    dest = folder / "d.qcow2"

    result = download_to_file(
        url(httpserver, "/d.qcow2?sig=s3cret"), dest, checksum="{SHA-256}" + sha256(data)
    )

    assert result == DownloadResult(
        path=dest,
        size=len(data),
        sha256=sha256(data),
        digest="{SHA-256}" + sha256(data),
        content_type="application/octet-stream",
        final_url=url(httpserver, "/d.qcow2"),  # no query string: it may carry a signature
    )
    assert dest.read_bytes() == data
    assert os.listdir(folder) == ["d.qcow2"]  # no temporary file left
    request = requests_seen(httpserver)[0]
    assert request.headers["Host"] == f"127.0.0.1:{httpserver.port}"
    assert request.headers["Accept-Encoding"] == "identity"
    assert request.query_string == b"sig=s3cret"


def test_download_with_md5_checksum_also_computes_sha256(httpserver, folder):
    data = payload(MIB + 1)
    md5 = hashlib.md5(data).hexdigest()
    httpserver.expect_request("/d.iso").respond_with_data(data)

    result = download_to_file(url(httpserver, "/d.iso"), folder / "d.iso", checksum=f"{{MD5}}{md5}")

    assert result.digest == f"{{MD5}}{md5}"
    assert result.sha256 == sha256(data)
    assert (folder / "d.iso").read_bytes() == data


def test_without_checksum_the_digest_is_sha256(httpserver, folder):
    data = b"small"
    httpserver.expect_request("/s").respond_with_data(data)
    result = download_to_file(url(httpserver, "/s"), folder / "s")
    assert result.digest == "{SHA-256}" + sha256(data)
    assert result.size == 5


def test_existing_destination_is_replaced(httpserver, folder):
    (folder / "d").write_bytes(b"old bytes")
    httpserver.expect_request("/d").respond_with_data(b"new")
    download_to_file(url(httpserver, "/d"), folder / "d")
    assert (folder / "d").read_bytes() == b"new"


def test_20_mib_body(httpserver, folder):
    # Reads go through a fixed pool of 1 MiB buffers, so memory does not grow with the size;
    # this checks that the pipeline keeps every byte in order.
    data = payload(20 * MIB, seed=20)
    httpserver.expect_request("/big").respond_with_data(data)
    result = download_to_file(url(httpserver, "/big"), folder / "big")
    assert result.size == len(data)
    assert result.sha256 == sha256(data)
    assert (folder / "big").read_bytes() == data


def test_progress_is_called_with_increasing_values_and_the_final_total(httpserver, folder):
    data = payload(5 * MIB + 3)
    httpserver.expect_request("/p").respond_with_data(data)
    calls: list[tuple[int, int | None]] = []
    names_during: list[list[str]] = []

    def progress(done: int, total: int | None) -> None:
        calls.append((done, total))
        names_during.append(os.listdir(folder))

    download_to_file(url(httpserver, "/p"), folder / "p", progress=progress, progress_interval=0)

    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert len(calls) >= 3
    assert all(total == len(data) for _, total in calls)
    assert calls[-1] == (len(data), len(data))
    # While running, the bytes go to a hidden temporary file next to the destination.
    assert names_during[0][0].startswith(".p.part-")


def test_progress_is_rate_limited(httpserver, folder):
    httpserver.expect_request("/p").respond_with_data(payload(4 * MIB))
    calls = []
    download_to_file(
        url(httpserver, "/p"),
        folder / "p",
        progress=lambda d, t: calls.append(d),
        progress_interval=3600,
    )
    # The first chunk (at most a MiB, however it arrived), then the final call; none between.
    assert len(calls) == 2
    assert 0 < calls[0] <= MIB
    assert calls[1] == 4 * MIB


def test_an_exception_from_progress_aborts_and_cleans_up(httpserver, folder):
    httpserver.expect_request("/p").respond_with_data(payload(3 * MIB))

    def cancel(done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_to_file(url(httpserver, "/p"), folder / "p", progress=cancel)
    assert os.listdir(folder) == []


# --- failures ------------------------------------------------------------------------------


def test_404_fails_at_once(httpserver, folder):
    httpserver.expect_request("/gone").respond_with_data("no", status=404)

    with pytest.raises(DownloadError) as caught:
        download_to_file(url(httpserver, "/gone?signature=s3cret"), folder / "d", **FAST)

    assert caught.value.retryable is False
    assert caught.value.status == 404
    assert caught.value.message == f"HTTP 404 NOT FOUND for {url(httpserver, '/gone')}"
    assert "s3cret" not in str(caught.value)
    assert len(httpserver.log) == 1
    assert os.listdir(folder) == []


@pytest.mark.parametrize("status", [403, 410])
def test_other_client_errors_are_not_retried(httpserver, folder, status):
    httpserver.expect_request("/x").respond_with_data("no", status=status)
    with pytest.raises(DownloadError) as caught:
        download_to_file(url(httpserver, "/x"), folder / "d", **FAST)
    assert (caught.value.retryable, caught.value.status) == (False, status)
    assert len(httpserver.log) == 1


def test_500_then_200_succeeds(httpserver, folder):
    data = payload(2 * MIB)
    httpserver.expect_ordered_request("/d").respond_with_data("busy", status=500)
    httpserver.expect_ordered_request("/d").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/d").respond_with_data(data)

    result = download_to_file(url(httpserver, "/d"), folder / "d", **FAST)

    assert result.sha256 == sha256(data)
    assert len(httpserver.log) == 3


def test_5xx_gives_up_after_max_attempts(httpserver, folder):
    httpserver.expect_request("/d").respond_with_data("busy", status=502)
    with pytest.raises(DownloadError) as caught:
        download_to_file(url(httpserver, "/d?token=s3cret"), folder / "d", max_attempts=3, **FAST)
    assert caught.value.retryable is True
    assert caught.value.status == 502
    assert "s3cret" not in caught.value.message
    assert len(httpserver.log) == 3
    assert os.listdir(folder) == []


def test_truncated_body_is_resumed_with_range(httpserver, folder):
    data = payload(3 * MIB + 777)
    half = 2 * MIB + 100

    def handler(request: Request) -> Response:
        if "Range" not in request.headers:
            # Promise the whole file, send part of it, close: a connection cut mid-transfer.
            response = Response(data[:half], direct_passthrough=True)
            response.headers["Content-Length"] = str(len(data))
            response.headers["Accept-Ranges"] = "bytes"
            response.headers["ETag"] = '"v1"'
            return response
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        response = Response(data[start:], status=206)
        response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        return response

    httpserver.expect_request("/d").respond_with_handler(handler)
    calls = []

    result = download_to_file(
        url(httpserver, "/d"),
        folder / "d",
        checksum="{SHA-256}" + sha256(data),
        progress=lambda d, t: calls.append((d, t)),
        progress_interval=0,
        **FAST,
    )

    seen = requests_seen(httpserver)
    assert len(seen) == 2
    assert "Range" not in seen[0].headers
    assert seen[1].headers["Range"] == f"bytes={half}-"
    assert seen[1].headers["If-Range"] == '"v1"'
    # The hash went on from the kept bytes: the checksum of the whole file matched.
    assert result.sha256 == sha256(data)
    assert (folder / "d").read_bytes() == data
    assert calls[-1] == (len(data), len(data))
    assert os.listdir(folder) == ["d"]


def test_server_answering_200_to_a_range_restarts_from_zero(httpserver, folder):
    data = payload(2 * MIB + 5)
    cut = MIB + 3

    def handler(request: Request) -> Response:
        if "Range" not in request.headers:
            response = Response(data[:cut], direct_passthrough=True)
            response.headers["Content-Length"] = str(len(data))
            response.headers["Accept-Ranges"] = "bytes"
            return response
        return Response(data)  # ignores the Range: the whole file again

    httpserver.expect_request("/d").respond_with_handler(handler)

    result = download_to_file(url(httpserver, "/d"), folder / "d", **FAST)

    assert requests_seen(httpserver)[1].headers["Range"] == f"bytes={cut}-"
    assert result.size == len(data)
    assert result.sha256 == sha256(data)
    assert (folder / "d").read_bytes() == data


def test_truncated_body_without_ranges_starts_over(httpserver, folder):
    data = payload(MIB + 10)
    responses = iter(["short", "full"])

    def handler(request: Request) -> Response:
        if next(responses) == "short":
            response = Response(data[:1000], direct_passthrough=True)
            response.headers["Content-Length"] = str(len(data))
            return response
        return Response(data)

    httpserver.expect_request("/d").respond_with_handler(handler)
    result = download_to_file(url(httpserver, "/d"), folder / "d", **FAST)
    assert "Range" not in requests_seen(httpserver)[1].headers
    assert result.sha256 == sha256(data)


def test_wrong_checksum_leaves_nothing(httpserver, folder):
    data = payload(MIB + 99)
    httpserver.expect_request("/d").respond_with_data(data)
    wrong = "{SHA-256}" + "0" * 64

    with pytest.raises(ChecksumMismatch) as caught:
        download_to_file(url(httpserver, "/d"), folder / "d", checksum=wrong, **FAST)

    assert caught.value.retryable is False
    assert caught.value.expected == wrong
    assert caught.value.actual == "{SHA-256}" + sha256(data)
    assert caught.value.message == f"checksum mismatch: expected {wrong}, got {caught.value.actual}"
    assert len(httpserver.log) == 1  # not retried: the same bytes would come again
    assert os.listdir(folder) == []


def test_wrong_md5_checksum(httpserver, folder):
    httpserver.expect_request("/d").respond_with_data(b"abc")
    with pytest.raises(ChecksumMismatch) as caught:
        download_to_file(url(httpserver, "/d"), folder / "d", checksum="f" * 32)
    assert caught.value.expected == "{MD5}" + "f" * 32
    assert caught.value.actual == "{MD5}" + hashlib.md5(b"abc").hexdigest()
    assert os.listdir(folder) == []


def test_stalled_server_is_retried_then_given_up(folder):
    release = threading.Event()
    data = payload(MIB)

    def body():
        yield data[:65536]
        release.wait(10)  # then nothing: the client must notice on its own
        yield data[65536:]

    def handler(request: Request) -> Response:
        response = Response(body(), direct_passthrough=True)
        response.headers["Content-Length"] = str(len(data))
        return response

    # Threaded, so that the stalled first response does not hold up the second attempt.
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request("/slow").respond_with_handler(handler)
    server.start()
    try:
        with pytest.raises(StallError) as caught:
            download_to_file(
                url(server, "/slow"),
                folder / "d",
                read_timeout=0.5,
                stall_timeout=0.5,
                max_attempts=2,
                backoff_base=0.01,
            )
        attempts = len(server.log)
    finally:
        release.set()
        server.stop()

    assert caught.value.retryable is True
    assert "no data from" in caught.value.message
    assert attempts == 2
    assert os.listdir(folder) == []


def test_a_server_pausing_less_than_the_stall_timeout_completes_in_one_attempt(folder):
    # Plain HTTP bodies are spliced from a socket that has a timeout: pauses must be waited
    # out (not taken for errors), and pieces of every size land in order.
    data = payload(MIB + 4097)
    pieces = [data[i : i + 70001] for i in range(0, len(data), 70001)]

    def body():
        for number, piece in enumerate(pieces):
            if number % 4 == 1:
                time.sleep(0.05)
            yield piece

    def handler(request: Request) -> Response:
        response = Response(body(), direct_passthrough=True)
        response.headers["Content-Length"] = str(len(data))
        return response

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request("/pauses").respond_with_handler(handler)
    server.start()
    try:
        result = download_to_file(
            url(server, "/pauses"), folder / "d", read_timeout=2, stall_timeout=2, max_attempts=1
        )
    finally:
        server.stop()
    assert result.sha256 == sha256(data)
    assert (folder / "d").read_bytes() == data


def test_server_too_slow_to_answer_is_a_retryable_timeout(folder):
    release = threading.Event()

    def handler(request: Request) -> Response:
        release.wait(10)
        return Response(b"late")

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request("/late").respond_with_handler(handler)
    server.start()
    try:
        with pytest.raises(DownloadError) as caught:
            download_to_file(
                url(server, "/late"),
                folder / "d",
                read_timeout=0.3,
                stall_timeout=5,
                max_attempts=1,
            )
    finally:
        release.set()
        server.stop()
    assert caught.value.retryable is True
    assert "timed out" in caught.value.message
    assert os.listdir(folder) == []


def test_connection_refused_is_retryable(folder):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once the socket is closed
    with pytest.raises(DownloadError) as caught:
        download_to_file(f"http://127.0.0.1:{port}/x", folder / "d", max_attempts=2, **FAST)
    assert caught.value.retryable is True
    assert caught.value.message.startswith(NO_HTTP_ANSWER)
    assert os.listdir(folder) == []


def test_max_bytes_from_content_length(httpserver, folder):
    httpserver.expect_request("/d").respond_with_data(payload(2 * MIB))
    with pytest.raises(DownloadError, match="more than the limit of 1048576") as caught:
        download_to_file(url(httpserver, "/d"), folder / "d", max_bytes=MIB, **FAST)
    assert caught.value.retryable is False
    assert os.listdir(folder) == []


def test_max_bytes_while_streaming_without_content_length(httpserver, folder):
    chunks = [payload(MIB // 2, seed=i) for i in range(5)]
    httpserver.expect_request("/d").respond_with_response(
        Response(iter(chunks), direct_passthrough=True)
    )
    with pytest.raises(DownloadError, match="sends more than the limit") as caught:
        download_to_file(url(httpserver, "/d"), folder / "d", max_bytes=MIB, **FAST)
    assert caught.value.retryable is False
    assert len(httpserver.log) == 1
    assert os.listdir(folder) == []


# --- redirects -----------------------------------------------------------------------------


def redirect(to: str, status: int = 302) -> Response:
    return Response(status=status, headers={"Location": to})


def test_redirect_to_a_denied_address_is_refused(httpserver, folder, settings):
    settings.STENCIL_URL_DENIED_NETWORKS = [*DEFAULT_DENIED_NETWORKS, "127.0.0.2/32"]
    httpserver.expect_request("/d").respond_with_response(
        redirect(f"http://127.0.0.2:{httpserver.port}/d")
    )
    with pytest.raises(UnsafeUrl, match="127.0.0.2 is in denied network 127.0.0.2/32"):
        download_to_file(url(httpserver, "/d"), folder / "d", **FAST)
    assert len(httpserver.log) == 1
    assert os.listdir(folder) == []


def test_redirect_to_another_scheme_is_refused(httpserver, folder):
    httpserver.expect_request("/d").respond_with_response(redirect("file:///etc/passwd"))
    with pytest.raises(UnsafeUrl, match="unsupported URL scheme 'file'"):
        download_to_file(url(httpserver, "/d"), folder / "d", **FAST)
    assert os.listdir(folder) == []


def test_first_url_is_checked_before_any_request(httpserver, folder, settings):
    settings.STENCIL_URL_ALLOW_LOOPBACK = False
    with pytest.raises(UnsafeUrl, match="denied network 127.0.0.0/8"):
        download_to_file(url(httpserver, "/d"), folder / "d")
    assert httpserver.log == []
    assert os.listdir(folder) == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_every_caller_header_is_dropped_on_a_cross_origin_redirect(
    httpserver, other_server, folder, status
):
    httpserver.expect_request("/start").respond_with_response(
        redirect(url(other_server, "/file?X-Sig=s3cret"), status)
    )
    other_server.expect_request("/file").respond_with_data(b"payload")
    headers = {"Authorization": "Bearer t0ken", "Cookie": "session=1", "X-Trace": "abc"}

    result = download_to_file(url(httpserver, "/start"), folder / "d", headers=headers, **FAST)

    assert (folder / "d").read_bytes() == b"payload"
    assert result.final_url == url(other_server, "/file")
    first = requests_seen(httpserver)[0]
    assert first.headers["Authorization"] == "Bearer t0ken"
    second = requests_seen(other_server)[0]
    assert "Authorization" not in second.headers
    assert "Cookie" not in second.headers
    assert "X-Trace" not in second.headers, "an API key may ride in any header name"
    assert second.headers["Host"] == f"127.0.0.1:{other_server.port}"


def test_credentials_are_kept_on_a_same_origin_redirect(httpserver, folder):
    httpserver.expect_request("/dir/start").respond_with_response(redirect("../files/d?v=2"))
    httpserver.expect_request("/files/d").respond_with_data(b"payload")

    download_to_file(
        url(httpserver, "/dir/start"),
        folder / "d",
        headers={"Authorization": "Bearer t0ken"},
        **FAST,
    )

    seen = requests_seen(httpserver)
    assert [r.path for r in seen] == ["/dir/start", "/files/d"]
    assert seen[1].headers["Authorization"] == "Bearer t0ken"
    assert seen[1].query_string == b"v=2"


def test_too_many_redirects(httpserver, folder):
    httpserver.expect_request("/loop").respond_with_response(redirect("/loop"))
    with pytest.raises(DownloadError, match="more than 3 redirects") as caught:
        download_to_file(url(httpserver, "/loop"), folder / "d", max_redirects=3, **FAST)
    assert caught.value.retryable is False
    assert len(httpserver.log) == 4


# --- HTTPS ---------------------------------------------------------------------------------


def test_https_fails_without_the_ca(https_server, folder):
    https_server.expect_request("/d").respond_with_data(b"secret bytes")
    with pytest.raises(DownloadError) as caught:
        download_to_file(url(https_server, "/d", scheme="https"), folder / "d", **FAST)
    assert caught.value.retryable is False
    assert "certificate verif" in caught.value.message
    assert os.listdir(folder) == []


def test_https_works_with_the_ca_file(https_server, tls, folder):
    data = payload(2 * MIB + 1)
    https_server.expect_request("/d").respond_with_data(data)
    result = download_to_file(
        url(https_server, "/d", scheme="https"), folder / "d", ca_file=tls[1], **FAST
    )
    assert result.sha256 == sha256(data)
    assert (folder / "d").read_bytes() == data


def test_https_checks_the_name_but_connects_to_the_checked_address(
    https_server, tls, folder, fake_dns
):
    fake_dns.update({"mirror.stencil.test", "other.stencil.test"})
    https_server.expect_request("/d").respond_with_data(b"named")

    result = download_to_file(
        url(https_server, "/d", scheme="https", host="mirror.stencil.test"),
        folder / "d",
        ca_file=tls[1],
        **FAST,
    )
    assert (folder / "d").read_bytes() == b"named"
    assert result.final_url == f"https://mirror.stencil.test:{https_server.port}/d"
    assert requests_seen(https_server)[0].headers["Host"] == (
        f"mirror.stencil.test:{https_server.port}"
    )

    # Same server, same CA, but a name the certificate does not carry.
    with pytest.raises(DownloadError, match="certificate verif") as caught:
        download_to_file(
            url(https_server, "/d", scheme="https", host="other.stencil.test"),
            folder / "e",
            ca_file=tls[1],
            **FAST,
        )
    assert caught.value.retryable is False
    assert os.listdir(folder) == ["d"]


def test_missing_ca_file_is_reported(https_server, folder):
    with pytest.raises(DownloadError, match="cannot load CA certificates") as caught:
        download_to_file(
            url(https_server, "/d", scheme="https"), folder / "d", ca_file=str(folder / "no.pem")
        )
    assert caught.value.retryable is False
    assert os.listdir(folder) == []


# --- odds and ends -------------------------------------------------------------------------


def test_429_is_retried(httpserver, folder):
    # Not in the "4xx is final" rule: "too many requests" asks to come back later (as 408 does).
    httpserver.expect_ordered_request("/d").respond_with_data("slow down", status=429)
    httpserver.expect_ordered_request("/d").respond_with_data(b"ok")
    result = download_to_file(url(httpserver, "/d"), folder / "d", **FAST)
    assert result.size == 2
    assert len(httpserver.log) == 2


class RawServer:
    """Answers each connection on 127.0.0.1 with the next canned bytes, then closes it.

    For wire formats werkzeug would not produce on request (a cut chunked body).
    """

    def __init__(self, answers: list[bytes]):
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for answer in self.answers:
            conn, _ = self.sock.accept()
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                self.requests.append(request)
                conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


def chunked(*parts: bytes, end: bool = True) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return head + body + (b"0\r\n\r\n" if end else b"")


def test_chunked_body_and_a_cut_chunked_body_is_retried(folder):
    data = payload(MIB + 17)
    server = RawServer([chunked(data[:1000], end=False), chunked(data[:1000], data[1000:])])
    try:
        result = download_to_file(f"http://127.0.0.1:{server.port}/c", folder / "c", **FAST)
    finally:
        server.close()
    assert len(server.requests) == 2
    assert result.sha256 == sha256(data)
    assert (folder / "c").read_bytes() == data


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Evil": "a\r\nHost: other"},
        {"Bad Name": "x"},
        {"X-Nul": "a\x00"},
        {"X-Trailing-Newline\n": "x"},  # a regex's `$` would let it through to http.client
        {"X-Trail": "abc\n"},
        {"Keep-Alive": "5"},
    ],
)
def test_header_injection_is_refused(httpserver, folder, headers):
    with pytest.raises(DownloadError, match="request header refused"):
        download_to_file(url(httpserver, "/d"), folder / "d", headers=headers)
    assert httpserver.log == []
    assert os.listdir(folder) == []
