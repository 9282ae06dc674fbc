# -*- test-case-name: tests.cache.test_feeds -*-
"""
How the cache's sessions fill its L{DaemonStats}: from the hooks of its
L{SessionSlot} (or registry) and of each L{Session}.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from twisted.application.internet import StreamServerEndpointService

from imgrelay.cache.registry import SessionRegistry
from imgrelay.core.store import Image, Session, SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.core.version import VERSION
from imgrelay.observe.service import Observability, ObservingService
from imgrelay.observe.stats import DaemonStats


def watchSlot(slot: Union[SessionSlot, SessionRegistry], stats: DaemonStats) -> None:
    """
    Count every session a proxy claims in C{slot} (one images directory's,
    or a registry's): its verified images as they come, its bytes and open
    images when read, its outcome.
    """

    def claimed(session: Session) -> None:
        counters = stats.begin(
            session.name or "", "receiving",
            # A CRIU image-proxy's link counts no bytes as they arrive:
            # its images are all there is.
            lambda: (max(session.received, session.bytes), session.inFlight),
            lambda: session.linkBytes,
        )

        def verified(image: Image) -> None:
            stats.imageVerified(counters, image.snapshotId, image.size)

        def final(session: Session) -> None:
            if session.state is SessionState.COMPLETE:
                stats.complete(counters)
            else:
                stats.fail(counters, session.failure or "unknown", session.failureKind or "other")

        session.addImageObserver(verified)
        session.addFinalObserver(final)

    slot.addClaimObserver(claimed)


def observeCache(
    slot: Union[SessionSlot, SessionRegistry], options: Observability, reactor: Any,
    listening: dict[str, StreamServerEndpointService], held: Callable[[], int],
) -> ObservingService:
    """
    @param slot: Where the cache's sessions are claimed.
    @param options: What to report.
    @param reactor: The reactor.
    @param listening: The cache's C{"local"} (with one images directory)
        and C{"link"} services.
    @param held: The bytes of every session the cache holds.
    @return: The cache's observing service, fed by C{slot}.
    """
    stats = DaemonStats("cache", reactor.seconds, VERSION, held=held)
    watchSlot(slot, stats)
    return ObservingService(stats, options, reactor, listening)
