# -*- test-case-name: tests.observe.test_feeds -*-
"""
How each daemon's sessions fill its L{DaemonStats}: the cache's from its
L{SessionSlot} and L{Session} hooks, the proxy's from L{ProxyService}'s
session observers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Union

from twisted.application.internet import StreamServerEndpointService
from twisted.python.failure import Failure

from imgrelay.observe.service import Observability, ObservingService
from imgrelay.observe.stats import DaemonStats
from imgrelay.cache.registry import SessionRegistry
from imgrelay.core.store import Image, Session, SessionSlot, SessionState

if TYPE_CHECKING:
    from imgrelay.proxy.service import ProxyService
    from imgrelay.proxy.session import OutgoingImage, ProxySession, SessionOutcome


def _version() -> str:
    from imgrelay import __version__

    return __version__


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


def _proxyErrorKind(reason: str) -> str:
    # The cache's refusal of an image, relayed by the link, is its size or
    # checksum not matching.
    return "checksum" if "refused an image" in reason else "other"


def watchProxy(service: ProxyService, stats: DaemonStats) -> None:
    """
    Count every session C{service} starts: the bytes read from CRIU and the
    images open as it goes, each image as the cache verifies it (with its
    snapshot), and its outcome.
    """

    def started(session: ProxySession) -> None:
        counters = stats.begin(session.name, "sending", lambda: (session.bytesRead, session.openImages))

        def acked(image: OutgoingImage) -> None:
            stats.imageVerified(counters, image.snapshotId, image.checksum.size)

        session.addAckObserver(acked)

        def over(result: Union[SessionOutcome, Failure]) -> None:
            if isinstance(result, Failure):
                reason = result.getErrorMessage()
                stats.fail(counters, reason, _proxyErrorKind(reason))
            else:
                stats.complete(counters, images=result.images, bytes=result.bytes)

        session.addOverObserver(over)

    service.addSessionStartObserver(started)


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
    stats = DaemonStats("cache", reactor.seconds, _version(), held=held)
    watchSlot(slot, stats)
    return ObservingService(stats, options, reactor, listening)


def observeProxy(
    service: ProxyService, options: Observability, reactor: Any, listening: dict[str, StreamServerEndpointService]
) -> ObservingService:
    """
    @param service: The proxy.
    @param options: What to report.
    @param reactor: The reactor.
    @param listening: The proxy's C{"local"} service.
    @return: The proxy's observing service, fed by C{service}.
    """

    def held() -> int:
        return sum(
            s.local.bytes for s in service.sessions if s.local is not None
        )

    stats = DaemonStats("proxy", reactor.seconds, _version(), held=held)
    watchProxy(service, stats)
    return ObservingService(stats, options, reactor, listening)
