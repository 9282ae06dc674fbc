"""
Tests for L{imgrelay.core.store}: images, sessions and their waiters, and
the slot that hands sessions to proxies and restores.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.core.errors import SessionError
from imgrelay.core.integrity import ManifestEntry
from imgrelay.core.interfaces import IImageSource, ISessionClaims
from imgrelay.core.imagedata import ImageData
from imgrelay.core.store import Image, Session, SessionSlot, SessionState


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


class SessionSlotTests(SynchronousTestCase):
    """
    Tests for L{SessionSlot}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.consumed: list[Session] = []
        self.slot = SessionSlot(self.consumed.append, self.clock.seconds)

    def test_clockPassedOn(self) -> None:
        """
        Sessions of the slot read the slot's clock.
        """
        self.clock.advance(42)
        session = self.slot.claim("mig")
        self.assertEqual(session.started, 42)

    def test_restoreBeforeClaim(self) -> None:
        """
        A restore attaching before any proxy claimed gets the very session
        the next claim fills, so it is woken by its images.
        """
        restore = self.slot.attachRestore()
        self.assertIs(restore.state, SessionState.WAITING)
        d = restore.waitImage("", "a.img")
        session = self.slot.claim("mig")
        self.assertIs(session, restore)
        self.assertEqual(session.restores, 1)
        image = _image("a.img")
        session.addVerified(image)
        self.assertIs(self.successResultOf(d), image)

    def test_claimWhileReceiving(self) -> None:
        """
        A claim while a session is receiving is refused, under any name, and
        the receiving session is left alone.
        """
        session = self.slot.claim("mig")
        self.assertRaises(SessionError, self.slot.claim, "other")
        error = self.assertRaises(SessionError, self.slot.claim, "mig")
        self.assertIn("'mig'", str(error))
        self.assertIs(self.slot.current, session)
        self.assertIs(session.state, SessionState.RECEIVING)
        self.assertEqual(session.name, "mig")

    def test_sameNameWhenComplete(self) -> None:
        """
        Claiming a complete, unconsumed session's name again is refused: the
        same dump must not be overwritten while it can still be restored.
        """
        session = self.slot.claim("mig")
        session.complete()
        error = self.assertRaises(SessionError, self.slot.claim, "mig")
        self.assertIn("already complete", str(error))
        self.assertIs(self.slot.current, session)

    def test_otherNameAfterComplete(self) -> None:
        """
        A different name after a session completed gets a fresh session.
        """
        first = self.slot.claim("mig")
        first.addVerified(_image("a.img"))
        first.complete()
        second = self.slot.claim("mig2")
        self.assertIsNot(second, first)
        self.assertIs(self.slot.current, second)
        self.assertEqual(second.name, "mig2")
        self.assertIs(second.state, SessionState.RECEIVING)
        self.assertEqual(second.images, {})
        self.assertIs(first.state, SessionState.COMPLETE)

    def test_claimAfterFailure(self) -> None:
        """
        After a failed session, even the same name gets a fresh session.
        """
        first = self.slot.claim("mig")
        first.fail("broken")
        second = self.slot.claim("mig")
        self.assertIsNot(second, first)
        self.assertIs(second.state, SessionState.RECEIVING)

    def test_consumedAfterLastRestore(self) -> None:
        """
        A complete session is consumed once its last restore detached, not
        before, and only once; the slot then offers a fresh session.
        """
        r1 = self.slot.attachRestore()
        r2 = self.slot.attachRestore()
        session = self.slot.claim("mig")
        session.complete()
        self.slot.detachRestore(r1)
        self.assertEqual(self.consumed, [])
        self.assertIs(self.slot.current, session)
        self.slot.detachRestore(r2)
        self.assertEqual(self.consumed, [session])
        self.assertTrue(session.consumed)
        self.assertIsNot(self.slot.current, session)
        self.assertIs(self.slot.current.state, SessionState.WAITING)
        # A failure afterwards does not consume it again.
        session.fail("late")
        self.assertEqual(self.consumed, [session])

    def test_completeKeptForRestore(self) -> None:
        """
        A complete session that no restore read yet is not consumed: it
        stays current, and a restore connecting later reads it and consumes
        it when done.
        """
        session = self.slot.claim("mig")
        image = _image("a.img")
        session.addVerified(image)
        session.complete()
        self.assertEqual(self.consumed, [])
        self.assertFalse(session.consumed)
        restore = self.slot.attachRestore()
        self.assertIs(restore, session)
        self.assertIs(self.successResultOf(restore.waitImage("", "a.img")), image)
        self.slot.detachRestore(restore)
        self.assertEqual(self.consumed, [session])

    def test_restoreLeavesBeforeFinal(self) -> None:
        """
        A restore that detaches while the session is still receiving does
        not consume it.
        """
        restore = self.slot.attachRestore()
        session = self.slot.claim("mig")
        self.slot.detachRestore(restore)
        self.assertEqual(self.consumed, [])
        self.assertIs(self.slot.current, session)

    def test_failedWithoutRestoreConsumed(self) -> None:
        """
        A session that fails with no restore attached is consumed at once.
        """
        session = self.slot.claim("mig")
        session.fail("broken")
        self.assertEqual(self.consumed, [session])

    def test_failedWithRestoreWaits(self) -> None:
        """
        A session that fails while a restore reads it is consumed when that
        restore detaches, exactly once.
        """
        restore = self.slot.attachRestore()
        session = self.slot.claim("mig")
        session.fail("broken")
        self.assertEqual(self.consumed, [])
        self.slot.detachRestore(restore)
        self.assertEqual(self.consumed, [session])
        self.assertIsNot(self.slot.current, session)

    def test_failedThenRestoreAttaches(self) -> None:
        """
        A restore attaching after a failed session was consumed still learns
        of the failure; when it leaves, the session is not consumed twice and
        the slot offers a fresh session.
        """
        session = self.slot.claim("mig")
        session.fail("broken")
        restore = self.slot.attachRestore()
        self.assertIs(restore, session)
        self.assertIsNone(self.successResultOf(restore.waitImage("", "a.img")))
        self.slot.detachRestore(restore)
        self.assertEqual(self.consumed, [session])
        self.assertIsNot(self.slot.current, session)
        self.assertIs(self.slot.current.state, SessionState.WAITING)

    def test_currentReplacedAfterConsumption(self) -> None:
        """
        After a session is consumed, a restore attaches to a new session and
        the next claim fills that one, even under the old name.
        """
        restore = self.slot.attachRestore()
        old = self.slot.claim("mig")
        old.complete()
        self.slot.detachRestore(restore)
        restore2: Optional[Session] = self.slot.attachRestore()
        self.assertIsNot(restore2, old)
        new = self.slot.claim("mig")
        self.assertIs(new, restore2)
        self.assertEqual(new.restores, 1)

    def test_restoreOfOldSessionDetachesLater(self) -> None:
        """
        A restore of a complete session that another claim replaced is
        consumed when it detaches, and the new current session is left in
        place.
        """
        restore = self.slot.attachRestore()
        old = self.slot.claim("mig")
        old.complete()
        new = self.slot.claim("mig2")
        self.slot.detachRestore(restore)
        self.assertEqual(self.consumed, [old])
        self.assertIs(self.slot.current, new)


class RetainTests(SynchronousTestCase):
    """
    A L{SessionSlot} with a retention time keeps a final session that many
    seconds after its last restore left, readable again meanwhile.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.consumed: list[Session] = []
        self.slot = SessionSlot(self.consumed.append, self.clock.seconds, retain=30, timer=self.clock)

    def completed(self) -> Session:
        session = self.slot.claim("mig")
        session.addVerified(_image("a.img", b"pages"))
        session.complete()
        return session

    def test_interface(self) -> None:
        """
        L{SessionSlot} provides L{ISessionClaims}.
        """
        self.assertTrue(verifyObject(ISessionClaims, self.slot))

    def test_needsTimer(self) -> None:
        """
        A positive retention time without a timer is refused.
        """
        self.assertRaises(ValueError, SessionSlot, retain=1)

    def test_keptAfterRestore(self) -> None:
        """
        A complete session stays current, with its images, until C{retain}
        seconds after its restore left; then it is consumed, its images
        dropped, and a fresh session is current.
        """
        session = self.completed()
        self.slot.detachRestore(self.slot.attachRestore())
        self.clock.advance(29.9)
        self.assertEqual(self.consumed, [])
        self.assertIs(self.slot.current, session)
        self.assertEqual(len(session.images), 1)
        self.assertEqual(self.slot.pendingReleases, 1)
        self.clock.advance(0.1)
        self.assertEqual(self.consumed, [session])
        self.assertEqual(session.images, {})
        self.assertIsNot(self.slot.current, session)
        self.assertIs(self.slot.current.state, SessionState.WAITING)
        self.assertEqual(self.slot.pendingReleases, 0)

    def test_readTwice(self) -> None:
        """
        A second restore during the retention time reads the same bytes;
        the time starts over when it leaves.
        """
        session = self.completed()
        first = self.slot.attachRestore()
        image = self.successResultOf(first.waitImage("", "a.img"))
        assert image is not None
        self.assertEqual(image.data.tobytes(), b"pages")
        self.slot.detachRestore(first)
        self.clock.advance(20)
        second = self.slot.attachRestore()
        self.assertIs(second, session)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        again = self.successResultOf(second.waitImage("", "a.img"))
        assert again is not None
        self.assertEqual(again.data.tobytes(), b"pages")
        self.slot.detachRestore(second)
        self.clock.advance(29)
        self.assertEqual(self.consumed, [])
        self.clock.advance(1)
        self.assertEqual(self.consumed, [session])

    def test_notRestoredKept(self) -> None:
        """
        A complete session no restore read yet is kept however long it
        takes: the retention time starts when a restore leaves.
        """
        session = self.completed()
        self.clock.advance(3600)
        self.assertEqual(self.consumed, [])
        self.assertIs(self.slot.attachRestore(), session)

    def test_failedKeptForRetain(self) -> None:
        """
        A failed session no restore reads is consumed C{retain} seconds after
        it failed; it stays current so that a later restore learns of the
        failure.
        """
        session = self.slot.claim("mig")
        session.fail("broken")
        self.clock.advance(29)
        self.assertEqual(self.consumed, [])
        self.clock.advance(1)
        self.assertEqual(self.consumed, [session])
        restore = self.slot.attachRestore()
        self.assertIs(restore, session)
        self.assertIsNone(self.successResultOf(restore.waitImage("", "a.img")))

    def test_failedWithRestore(self) -> None:
        """
        A failed session a restore reads is consumed C{retain} seconds after
        that restore left.
        """
        restore = self.slot.attachRestore()
        session = self.slot.claim("mig")
        session.fail("broken")
        self.clock.advance(100)
        self.assertEqual(self.consumed, [])
        self.slot.detachRestore(restore)
        self.clock.advance(30)
        self.assertEqual(self.consumed, [session])
        self.assertIsNot(self.slot.current, session)

    def test_claimDuringRetention(self) -> None:
        """
        Another name claimed while a session is kept replaces it at once:
        it is consumed and its timer cancelled.
        """
        old = self.completed()
        self.slot.detachRestore(self.slot.attachRestore())
        new = self.slot.claim("mig2")
        self.assertEqual(self.consumed, [old])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIs(self.slot.current, new)

    def test_neverRestoredWarning(self) -> None:
        """
        Replacing a complete session logs a warning if no restore ever read
        it, and none if one did (it was only kept for C{retain}).
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.completed()
        self.slot.detachRestore(self.slot.attachRestore())
        self.slot.claim("mig2").complete()
        self.assertFalse([e for e in events if "never restored" in formatEvent(e)])
        self.slot.claim("mig3")
        (warning,) = [formatEvent(e) for e in events if "never restored" in formatEvent(e)]
        self.assertIn("session mig2 was never restored", warning)

    def test_sameNameDuringRetention(self) -> None:
        """
        The same name is refused while its complete session is kept.
        """
        self.completed()
        self.slot.detachRestore(self.slot.attachRestore())
        self.assertRaises(SessionError, self.slot.claim, "mig")
        self.clock.advance(30)
        self.assertIs(self.slot.claim("mig").state, SessionState.RECEIVING)

    def test_replacedWhileRead(self) -> None:
        """
        A claim that replaces a session a restore still reads does not
        consume it: the restore reads on, and it is consumed C{retain}
        seconds after the restore left.
        """
        old = self.completed()
        restore = self.slot.attachRestore()
        self.slot.claim("mig2")
        self.assertEqual(self.consumed, [])
        image = self.successResultOf(restore.waitImage("", "a.img"))
        assert image is not None
        self.slot.detachRestore(restore)
        self.clock.advance(30)
        self.assertEqual(self.consumed, [old])


class RetainStopTests(SynchronousTestCase):
    """
    L{SessionSlot.stop} ends retention.
    """

    def test_stop(self) -> None:
        """
        A kept session is consumed at once when the slot stops, and a
        session that fails afterwards is consumed at once too.
        """
        clock = Clock()
        consumed: list[Session] = []
        slot = SessionSlot(consumed.append, clock.seconds, retain=60, timer=clock)
        kept = slot.claim("mig")
        kept.complete()
        slot.detachRestore(slot.attachRestore())
        slot.stop()
        self.assertEqual(consumed, [kept])
        late = slot.claim("mig2")
        late.fail("the cache is shutting down")
        self.assertEqual(consumed, [kept, late])
        self.assertEqual(clock.getDelayedCalls(), [])


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
