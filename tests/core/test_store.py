"""
Tests for L{imgrelay.core.store}: images, sessions and their waiters (the
slot that hands sessions on is tested in L{tests.core.test_slot}).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.core.errors import SessionError
from imgrelay.core.integrity import ManifestEntry
from imgrelay.core.interfaces import IImageSource
from imgrelay.core.imagedata import ImageData
from imgrelay.core.store import Image, Session, SessionState
from imgrelay.core.slot import SessionSlot


def _image(name: str, content: bytes = b"content", snapshotId: str = "") -> Image:
    """
    Make a verified image holding C{content}.
    """
    data = ImageData()
    data.append(content)
    return Image(snapshotId, name, data, 1234)


class ImageTests(SynchronousTestCase):
    """
    Tests for L{Image}.
    """

    def test_sizeAndManifest(self) -> None:
        """
        An image's size is its data's and its manifest entry carries its
        snapshot, name, size and checksum.
        """
        image = _image("pages-1.img", b"12345", "snap")
        self.assertEqual(image.size, 5)
        self.assertEqual(image.manifestEntry(), ManifestEntry("snap", "pages-1.img", 5, 1234))


class SessionTests(SynchronousTestCase):
    """
    Tests for L{Session}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.session = Session(self.clock.seconds)

    def test_interface(self) -> None:
        """
        L{Session} provides L{IImageSource}.
        """
        self.assertTrue(verifyObject(IImageSource, self.session))

    def test_initialState(self) -> None:
        """
        A new session waits for a proxy and holds nothing.
        """
        s = self.session
        self.assertIs(s.state, SessionState.WAITING)
        self.assertIsNone(s.name)
        self.assertFalse(s.final)
        self.assertEqual(s.bytes, 0)
        self.assertEqual(s.waiting, 0)

    def test_claim(self) -> None:
        """
        Claiming names the session, starts receiving, and records the time.
        """
        self.clock.advance(7)
        self.session.claim("mig")
        self.assertEqual(self.session.name, "mig")
        self.assertIs(self.session.state, SessionState.RECEIVING)
        self.assertEqual(self.session.started, 7)
        self.assertFalse(self.session.final)

    def test_waitVerified(self) -> None:
        """
        Waiting for an image already verified is answered at once with it.
        """
        self.session.claim("mig")
        image = _image("a.img", snapshotId="s")
        self.session.addVerified(image)
        self.assertTrue(self.session.has("s", "a.img"))
        self.assertIs(self.successResultOf(self.session.waitImage("s", "a.img")), image)
        self.assertEqual(self.session.waiting, 0)

    def test_waitUnverified(self) -> None:
        """
        Waiting for an image not verified yet waits, and is answered with the
        image once it is verified.
        """
        self.session.claim("mig")
        d = self.session.waitImage("", "a.img")
        self.assertNoResult(d)
        self.assertEqual(self.session.waiting, 1)
        image = _image("a.img")
        self.session.addVerified(image)
        self.assertIs(self.successResultOf(d), image)
        self.assertEqual(self.session.waiting, 0)

    def test_waitKeyedBySnapshot(self) -> None:
        """
        An image of the same name in another snapshot does not answer a
        waiter.
        """
        self.session.claim("mig")
        d = self.session.waitImage("snap2", "a.img")
        self.session.addVerified(_image("a.img", snapshotId="snap1"))
        self.assertNoResult(d)
        self.assertFalse(self.session.has("snap2", "a.img"))

    def test_everyWaiterWoken(self) -> None:
        """
        Every request waiting for one image is answered when it is verified,
        not only the first.
        """
        self.session.claim("mig")
        waiters = [self.session.waitImage("", "a.img") for _ in range(3)]
        other = self.session.waitImage("", "b.img")
        self.assertEqual(self.session.waiting, 4)
        image = _image("a.img")
        self.session.addVerified(image)
        for d in waiters:
            self.assertIs(self.successResultOf(d), image)
        self.assertNoResult(other)
        self.assertEqual(self.session.waiting, 1)

    def test_completeAnswersWaitersNone(self) -> None:
        """
        Once the session is complete, requests still waiting are answered
        with None, and later requests for missing images too; verified
        images are still served.
        """
        self.session.claim("mig")
        image = _image("a.img")
        self.session.addVerified(image)
        waiters = [self.session.waitImage("", "x.img") for _ in range(2)]
        self.clock.advance(3)
        self.session.complete()
        self.assertIs(self.session.state, SessionState.COMPLETE)
        self.assertTrue(self.session.final)
        self.assertEqual(self.session.ended, 3)
        for d in waiters:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.session.waiting, 0)
        self.assertIsNone(self.successResultOf(self.session.waitImage("", "y.img")))
        self.assertIs(self.successResultOf(self.session.waitImage("", "a.img")), image)
        self.assertEqual(self.session.bytes, image.size)

    def test_failAnswersNoneAndClears(self) -> None:
        """
        Failing a session answers every waiter with None, drops its images
        so that none is ever served, and records why.
        """
        self.session.claim("mig")
        self.session.addVerified(_image("a.img"))
        d = self.session.waitImage("", "b.img")
        self.session.fail("broken")
        self.assertIs(self.session.state, SessionState.FAILED)
        self.assertEqual(self.session.failure, "broken")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.session.images, {})
        self.assertEqual(self.session.bytes, 0)
        self.assertIsNone(self.successResultOf(self.session.waitImage("", "a.img")))

    def test_failIdempotent(self) -> None:
        """
        Failing a failed session changes nothing: the first reason stays
        and the end time is not moved.
        """
        self.session.claim("mig")
        self.session.fail("first")
        self.clock.advance(5)
        self.session.fail("second")
        self.assertEqual(self.session.failure, "first")
        self.assertEqual(self.session.ended, 0)
        self.assertIs(self.session.state, SessionState.FAILED)

    def test_failAfterComplete(self) -> None:
        """
        Failing a complete session changes nothing: it stays complete with
        its images.
        """
        self.session.claim("mig")
        image = _image("a.img")
        self.session.addVerified(image)
        self.session.complete()
        self.session.fail("late")
        self.assertIs(self.session.state, SessionState.COMPLETE)
        self.assertIsNone(self.session.failure)
        self.assertIs(self.successResultOf(self.session.waitImage("", "a.img")), image)

    def test_finalObserversOnce(self) -> None:
        """
        Final observers are called once, with the session, when it ends,
        even if it is failed again afterwards.
        """
        calls: list[Session] = []
        self.session.addFinalObserver(calls.append)
        self.session.addFinalObserver(calls.append)
        self.session.claim("mig")
        self.assertEqual(calls, [])
        self.session.fail("a")
        self.session.fail("b")
        self.assertEqual(calls, [self.session, self.session])

    def test_finalObserverOnComplete(self) -> None:
        """
        Completing a session calls its final observers, after its state is
        final.
        """
        states: list[SessionState] = []
        self.session.addFinalObserver(lambda s: states.append(s.state))
        self.session.claim("mig")
        self.session.complete()
        self.session.fail("late")
        self.assertEqual(states, [SessionState.COMPLETE])


class ReadsWaitForEndTests(SynchronousTestCase):
    """
    A session fed by a link that cannot announce later versions answers
    reads only once it is final.
    """

    def test_waitsUntilComplete(self) -> None:
        """
        With C{readsWaitForEnd}, a read of a verified image waits until the
        session completes, then gets the latest version; a read of an
        image that never came gets None then.
        """
        session = Session()
        session.readsWaitForEnd = True
        session.addVerified(_image("a.img", b"first"))
        present = session.waitImage("", "a.img")
        absent = session.waitImage("", "b.img")
        self.assertNoResult(present)
        session.addVerified(_image("a.img", b"second"))
        self.assertNoResult(present)
        session.complete()
        image = self.successResultOf(present)
        assert image is not None
        self.assertEqual(image.data.tobytes(), b"second")
        self.assertIsNone(self.successResultOf(absent))


class StatisticsHookTests(SynchronousTestCase):
    """
    What L{Session} and L{SessionSlot} tell the statistics.
    """

    def test_countReceived(self) -> None:
        """
        Bytes counted as received add up, whether or not an image is
        verified.
        """
        session = Session()
        session.countReceived(10)
        session.countReceived(5)
        self.assertEqual(session.received, 15)

    def test_inFlight(self) -> None:
        """
        Images announced and not yet verified are in flight, each version
        counted.
        """
        session = Session()
        session.arriving("", "a.img")
        session.arriving("", "b.img")
        session.arriving("", "b.img")
        self.assertEqual(session.inFlight, 3)
        session.addVerified(_image("b.img"))
        self.assertEqual(session.inFlight, 2)
        session.notArriving("", "a.img")
        self.assertEqual(session.inFlight, 1)

    def test_imageObserver(self) -> None:
        """
        Image observers are called with each image as it is verified.
        """
        session = Session()
        seen: list[Image] = []
        session.addImageObserver(seen.append)
        image = _image("a.img")
        session.arriving("", "a.img")
        session.addVerified(image)
        self.assertEqual(seen, [image])

    def test_failKind(self) -> None:
        """
        A failure records its kind, C{"other"} unless told; a second failure
        changes nothing.
        """
        session = Session()
        session.fail("bad bytes", "checksum")
        session.fail("later", "protocol")
        self.assertEqual((session.failure, session.failureKind), ("bad bytes", "checksum"))
        plain = Session()
        plain.fail("gone")
        self.assertEqual(plain.failureKind, "other")

    def test_claimObserver(self) -> None:
        """
        Claim observers are called with each session a proxy claims, named
        and receiving, including sessions that replace an earlier one.
        """
        slot = SessionSlot()
        claimed: list[tuple[Optional[str], SessionState]] = []
        slot.addClaimObserver(lambda s: claimed.append((s.name, s.state)))
        first = slot.claim("one")
        first.complete()
        slot.claim("two")
        self.assertEqual(claimed, [("one", SessionState.RECEIVING), ("two", SessionState.RECEIVING)])

    def test_refusedClaimNotObserved(self) -> None:
        """
        A claim the slot refuses is not told.
        """
        slot = SessionSlot()
        claimed: list[Session] = []
        slot.addClaimObserver(claimed.append)
        slot.claim("one")
        self.assertRaises(SessionError, slot.claim, "two")
        self.assertEqual(len(claimed), 1)
