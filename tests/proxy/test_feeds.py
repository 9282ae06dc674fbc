"""
Tests for L{imgrelay.proxy.feeds}: the proxy's sessions counted in its
L{DaemonStats}.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from imgrelay.proxy.feeds import watchProxy
from imgrelay.proxy.session import ProxySession
from imgrelay.proxy.interfaces import ILinkSender
from imgrelay.observe.stats import DaemonStats


@implementer(ILinkSender)
class _Link:
    """
    A link that sends nothing and records the image ids closed.
    """

    #: Pipes read into new bytes.
    ring = None

    def __init__(self) -> None:
        self.closed: list[int] = []

    def sendOpen(self, image: int, snapshotId: str, name: str, mode: int) -> None:
        pass

    def sendSnapshot(self, snapshotId: str) -> None:
        pass

    def sendChunk(self, image: int, data: bytes) -> None:
        pass

    def sendClose(self, image: int, size: int, crc: int) -> None:
        self.closed.append(image)

    def sendDone(self, images: int, size: int, digest: bytes) -> None:
        pass

    def sendAbort(self, reason: str) -> None:
        pass


class _Proxy:
    """
    The part of L{imgrelay.ProxyService} the feed uses.
    """

    def __init__(self) -> None:
        self.observers: list[Callable[[ProxySession], None]] = []

    def addSessionStartObserver(self, observer: Callable[[ProxySession], None]) -> None:
        self.observers.append(observer)

    def start(self, session: ProxySession) -> None:
        for observer in self.observers:
            observer(session)


class ProxyFeedTests(SynchronousTestCase):
    """
    Tests for L{watchProxy}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy = _Proxy()
        self.stats = DaemonStats("proxy", self.clock.seconds)
        watchProxy(self.proxy, self.stats)  # type: ignore[arg-type]

    def test_complete(self) -> None:
        """
        A session started is counted as sending; once the cache confirmed
        it, with the images and bytes it confirmed.
        """
        session = ProxySession("web-1", self.clock.seconds)
        self.proxy.start(session)
        self.assertEqual([(s.name, s.state) for s in self.stats.active], [("web-1", "sending")])
        link = _Link()
        session.accepted(link)
        image = session.openImage("", "a.img")
        image.write(b"hello")
        image.close()
        session.finish()
        session.acked(link.closed[0])
        self.clock.advance(1)
        session.doneOk()
        (counters,) = self.stats.ended
        self.assertEqual((counters.state, counters.images, counters.bytes), ("complete", 1, 5))

    def test_liveCounters(self) -> None:
        """
        While it sends, a session's bytes read from CRIU and images open are
        read live, each image the cache verified counts in its snapshot, and
        the first one is an event.
        """
        events: list[str] = []
        self.stats.addListener(lambda event, s: events.append(event))
        session = ProxySession("web-1", self.clock.seconds)
        self.proxy.start(session)
        link = _Link()
        session.accepted(link)
        first = session.openImage("snap", "a.img")
        session.openImage("snap", "b.img").write(b"12")
        first.write(b"hello")
        (counters,) = self.stats.sample()
        self.assertEqual((counters.bytes, counters.open, counters.images), (7, 2, 0))
        first.close()
        session.acked(link.closed[0])
        self.assertEqual((counters.images, counters.snapshots["snap"].bytes), (1, 5))
        self.assertEqual(events, ["first-image"])
        session.abort("test over")
        self.failureResultOf(session.result)

    def test_failedChecksum(self) -> None:
        """
        A session whose image the cache refused counts as a checksum error;
        another failure as C{other}.
        """
        refused = ProxySession("a", self.clock.seconds)
        self.proxy.start(refused)
        refused.failed("cache refused an image: checksum mismatch")
        self.failureResultOf(refused.result)
        self.failureResultOf(refused.ready)
        lost = ProxySession("b", self.clock.seconds)
        self.proxy.start(lost)
        lost.failed("link lost")
        self.failureResultOf(lost.result)
        self.failureResultOf(lost.ready)
        self.assertEqual([(s.name, s.error) for s in self.stats.ended],
                         [("a", "cache refused an image: checksum mismatch"), ("b", "link lost")])
        self.assertEqual(self.stats.errors, {"checksum": 1, "protocol": 0, "other": 1})
