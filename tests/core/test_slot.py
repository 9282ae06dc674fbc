"""
Tests for L{imgrelay.core.slot}: the slot that hands sessions to proxies and
restores, and how long it keeps them.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.core.errors import SessionError
from imgrelay.core.interfaces import ISessionClaims
from imgrelay.core.store import Session, SessionState
from imgrelay.core.slot import SessionSlot
from tests.core.test_store import _image


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
