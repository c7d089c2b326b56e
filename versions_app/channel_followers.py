"""Who follows a channel: a registry the layers above fill in (compute registers its VMs and VM
pools in AgentsAppConfig.ready()).

versions_app cannot see VMs, yet a promote must know the zones where followers run (the version
needs READY bytes there) and the admin's confirmation lists who will be rebuilt. Each source is
a function `(lineage_id, channel) -> iterable of Follower`.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True)
class Follower:
    """One VM or VM pool that follows a channel of a lineage."""

    kind: str  # "vm", "vm_pool"
    id: UUID
    name: str
    account_id: int
    zone_id: int
    zone: str
    state: str
    moves_now: bool  # rebuilt at once when the channel moves (else: when it next stops)


FollowerSource = Callable[[int, str], Iterable[Follower]]
_sources: dict[str, FollowerSource] = {}


def register_follower_source(kind: str, source: FollowerSource) -> None:
    """Called by an upper layer's `AppConfig.ready()`; registering a kind again replaces it."""
    _sources[kind] = source


def channel_followers(*, lineage_id: int, channel: str) -> list[Follower]:
    followers: list[Follower] = []
    for source in _sources.values():
        followers.extend(source(lineage_id, channel))
    return followers


def follower_zone_ids(*, lineage_id: int, channel: str) -> set[int]:
    return {
        follower.zone_id for follower in channel_followers(lineage_id=lineage_id, channel=channel)
    }
