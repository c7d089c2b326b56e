"""The signed extract URL: a plain Django view that streams a copy from its image store.

Authentication is the URL's signature and expiry (templates_app.extracts), not a session, so
download tools (curl, wget, a browser) fetch it as it is. GET and HEAD; a single Range is a 206
with Content-Range, several ranges a multipart/byteranges 206, none satisfiable a 416; ETag is
the copy's sha256 and If-None-Match / If-Range honour it. Nothing is read into memory whole:
the full file goes out through FileResponse (the server's sendfile where it has one), ranges in
1 MiB chunks.
"""

import logging
import uuid as uuid_lib
from email.utils import formatdate
from pathlib import Path

from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils.cache import parse_etags
from django.views.decorators.http import require_http_methods

from templates_app.byte_ranges import (
    multipart_length,
    multipart_parts,
    parse_range,
    read_range,
    stream_multipart,
)
from templates_app.errors import StencilError
from templates_app.extracts import extract_open, file_name

logger = logging.getLogger(__name__)
CONTENT_TYPE = "application/octet-stream"


def _etag(ref, path: Path) -> str:
    if ref.sha256:
        return f'"{ref.sha256}"'
    stat = path.stat()
    return f'"{stat.st_size:x}-{int(stat.st_mtime):x}"'


def _common_headers(response: HttpResponseBase, ref, path: Path, etag: str) -> None:
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = etag
    response["Last-Modified"] = formatdate(path.stat().st_mtime, usegmt=True)
    response["Content-Disposition"] = f'attachment; filename="{file_name(ref)}"'
    response["Cache-Control"] = "private, no-transform"


def _wanted_ranges(request: HttpRequest, size: int, etag: str):
    """Range, unless If-Range names another version of the file (then the whole file)."""
    if_range = request.headers.get("If-Range")
    if if_range and if_range.strip() != etag:
        return None
    return parse_range(request.headers.get("Range", ""), size)


@require_http_methods(["GET", "HEAD"])
def extract_download(request: HttpRequest, template_id, ref_id: int, filename: str):
    try:
        ref, path = extract_open(
            template_uuid=str(template_id),
            ref_id=ref_id,
            expires=request.GET.get("expires", ""),
            signature=request.GET.get("signature", ""),
        )
    except StencilError as exc:
        logger.info("extract of %s refused: %s", template_id, exc.message)  # never the signature
        return JsonResponse(exc.as_payload(), status=exc.status_code)
    size = path.stat().st_size
    etag = _etag(ref, path)
    if etag in parse_etags(request.headers.get("If-None-Match", "")):
        response = HttpResponse(status=304)
        _common_headers(response, ref, path, etag)
        return response
    ranges = _wanted_ranges(request, size, etag)
    head = request.method == "HEAD"
    if ranges == []:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
    elif ranges is None:
        response = _whole(path, head=head)
        response["Content-Length"] = str(size)
    elif len(ranges) == 1:
        start, end = ranges[0]
        body = iter(()) if head else read_range(path, start, end)
        response = StreamingHttpResponse(body, status=206, content_type=CONTENT_TYPE)
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
    else:
        boundary = uuid_lib.uuid4().hex
        pieces = multipart_parts(ranges, size, boundary, CONTENT_TYPE)
        body = iter(()) if head else stream_multipart(path, pieces)
        response = StreamingHttpResponse(
            body, status=206, content_type=f"multipart/byteranges; boundary={boundary}"
        )
        response["Content-Length"] = str(multipart_length(pieces))
    _common_headers(response, ref, path, etag)
    return response


def _whole(path: Path, *, head: bool) -> HttpResponseBase:
    if head:
        return HttpResponse(content_type=CONTENT_TYPE)
    return FileResponse(path.open("rb"), content_type=CONTENT_TYPE)
