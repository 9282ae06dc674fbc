"""
Tests for L{imgrelay.cache.feeds}: the cache's sessions counted in its
L{DaemonStats}.
"""

from __future__ import annotations


from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cache.feeds import watchSlot
from imgrelay.core.imagedata import ImageData
from imgrelay.observe.stats import DaemonStats
from imgrelay.core.store import Image
from imgrelay.core.slot import SessionSlot


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
