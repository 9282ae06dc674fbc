"""
Tests for L{imgrelay.observe.feeds}: the cache's sessions and the proxy's fill the
statistics.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from imgrelay.observe.feeds import watchProxy, watchSlot
from imgrelay.core.imagedata import ImageData
from imgrelay.proxy.session import ILinkSender, ProxySession
from imgrelay.observe.stats import DaemonStats
from imgrelay.core.store import Image, SessionSlot


def _image(snapshotId: str, name: str, content: bytes) -> Image:
    data = ImageData()
    data.append(content)
    data.close()
    return Image(snapshotId, name, data, 0)


class CacheFeedTests(SynchronousTestCase):
    """
    Tests for L{watchSlot}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.slot = SessionSlot(clock=self.clock.seconds)
        self.stats = DaemonStats("cache", self.clock.seconds)
        watchSlot(self.slot, self.stats)

    def test_completeSession(self) -> None:
        """
        A claimed session is counted as receiving; its bytes and open images
        are read live; each verified image is counted under its snapshot;
        its completion ends it.
        """
        session = self.slot.claim("mig")
        (counters,) = self.stats.active
        self.assertEqual((counters.name, counters.state), ("mig", "receiving"))
        session.arriving("1", "a.img")
        session.arriving("1", "b.img")
        session.countReceived(7)
        self.stats.refresh()
        self.assertEqual((counters.bytes, counters.open), (7, 2))
        session.addVerified(_image("1", "a.img", b"1234567"))
        self.assertEqual((counters.images, counters.snapshots["1"].bytes), (1, 7))
        session.notArriving("1", "b.img")
        self.clock.advance(2)
        session.complete()
        self.assertEqual(self.stats.active, [])
        self.assertEqual((counters.state, counters.bytes, counters.open, counters.ended), ("complete", 7, 0, 2))

    def test_failedSession(self) -> None:
        """
        A session that fails is counted with its cause and the kind of its
        error; the bytes that had arrived stay counted.
        """
        session = self.slot.claim("mig")
        session.countReceived(3)
        session.fail("image 'a' refused: checksum mismatch", "checksum")
        (counters,) = self.stats.ended
        self.assertEqual((counters.state, counters.error, counters.bytes), ("failed", session.failure, 3))
        self.assertEqual(self.stats.errors["checksum"], 1)

    def test_verifiedWithoutCounting(self) -> None:
        """
        A link that counts no bytes as they arrive (CRIU's format) still
        shows the bytes of its verified images.
        """
        session = self.slot.claim("mig")
        session.addVerified(_image("", "a.img", b"abcd"))
        self.stats.refresh()
        self.assertEqual(self.stats.active[0].bytes, 4)

    def test_sessionsInTurn(self) -> None:
        """
        Each session claimed in turn is counted on its own.
        """
        self.slot.claim("one").complete()
        self.slot.claim("two").fail("gone")
        self.assertEqual([(s.name, s.state) for s in self.stats.ended], [("one", "complete"), ("two", "failed")])
        self.assertEqual(self.stats.errors["other"], 1)


@implementer(ILinkSender)
class _Link:
    """
    A link that sends nothing and records the image ids closed.
    """

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
