"""Who checks a direct-download URL before it is registered.

The catalogue cannot reach a host; the compute layer registers the function that asks a random
Up host of the zone (agents_app.apps). Without one, registration checks nothing beyond the URL
rules.
"""

from collections.abc import Callable

from .models import Zone

UrlChecker = Callable[..., dict]
_checker: list[UrlChecker] = []


def register_direct_download_checker(checker: UrlChecker) -> None:
    """`checker(zone=, url=, headers=, verify=, checksum=, image_format=) -> dict`: raises a
    StencilError when the URL is refused; the dict has `checks` and, with verify, `verified`."""
    _checker[:] = [checker]


def check_direct_download_url(*, zone: Zone, **kwargs) -> dict:
    if not _checker:
        return {}
    return _checker[0](zone=zone, **kwargs)
