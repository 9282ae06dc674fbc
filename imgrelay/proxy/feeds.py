# -*- test-case-name: tests.proxy.test_feeds -*-
"""
How the proxy's sessions fill its L{DaemonStats}: from L{ProxyService}'s
session observers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from twisted.application.internet import StreamServerEndpointService
from twisted.python.failure import Failure

from imgrelay.core.version import VERSION
from imgrelay.observe.service import Observability, ObservingService
from imgrelay.observe.stats import DaemonStats
from imgrelay.proxy.session import OutgoingImage, ProxySession
from imgrelay.proxy.interfaces import SessionOutcome

if TYPE_CHECKING:
    from imgrelay.proxy.service import ProxyService


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
        counters = stats.begin(
            session.name, "sending", lambda: (session.bytesRead, session.openImages), lambda: session.bytesOnLink,
        )

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

    stats = DaemonStats("proxy", reactor.seconds, VERSION, held=held)
    watchProxy(service, stats)
    return ObservingService(stats, options, reactor, listening)
