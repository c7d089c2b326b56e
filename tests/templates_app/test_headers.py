"""HTTP header details: both spellings, and what registration refuses."""

import pytest

from templates_app.errors import InvalidInput
from templates_app.images.headers import header_pairs, validate_header_details


def test_both_spellings_become_headers():
    details = [("HTTP_HEADER", "X-Token: abc"), ("HTTP_HEADER:X-Other", "v"), ("OS", "linux")]
    assert header_pairs(details) == [("X-Token", "abc"), ("X-Other", "v")]
    validate_header_details(details)


@pytest.mark.parametrize(
    ("details", "rule"),
    [
        ([("HTTP_HEADER", "X-A:b\r\nHost: evil")], "CR, LF or NUL"),
        ([("HTTP_HEADER:X-A", "b\nc")], "CR, LF or NUL"),
        ([("HTTP_HEADER", "X-A:b\x00")], "CR, LF or NUL"),
        ([("HTTP_HEADER", "Host:evil.example")], "cannot be set"),
        ([("HTTP_HEADER:Content-Length", "0")], "cannot be set"),
        ([("HTTP_HEADER", "transfer-encoding:chunked")], "cannot be set"),
        ([("HTTP_HEADER", "Connection:close")], "cannot be set"),
        ([("HTTP_HEADER:Proxy-Authorization", "x")], "cannot be set"),
        ([("HTTP_HEADER", "Bad Name:x")], "not a valid HTTP header name"),
        ([("HTTP_HEADER", "Range:bytes=0-")], "cannot be set"),
        ([("HTTP_HEADER:If-Range", "x")], "cannot be set"),
        ([("HTTP_HEADER", "Accept-Encoding:gzip")], "cannot be set"),
        ([("HTTP_HEADER", "TE:trailers")], "cannot be set"),
        ([("HTTP_HEADER:Upgrade", "h2c")], "cannot be set"),
        ([("HTTP_HEADER", "X-Token:caf\u00e9")], "visible ASCII"),
        ([("HTTP_HEADER:X-Token", "\x7fdel")], "visible ASCII"),
    ],
)
def test_refused_headers_name_the_rule(details, rule):
    with pytest.raises(InvalidInput, match=rule) as refused:
        validate_header_details(details)
    assert refused.value.field == "details"
