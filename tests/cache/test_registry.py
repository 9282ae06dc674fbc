"""
Tests for L{imgrelay.cache.registry}: many sessions by name on one cache, each
with its own slot, opened and closed through hooks.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.core.errors import SessionError
from imgrelay.core.imagedata import ImageData
from imgrelay.core.interfaces import ISessionClaims
from imgrelay.cache.registry import DEFAULT_MAX_SESSIONS, SessionRegistry
from imgrelay.core.store import Image, Session, SessionState
from imgrelay.core.slot import SessionSlot


def _image(name: str, content: bytes) -> Image:
    data = ImageData()
    data.append(content)
    return Image("", name, data, 0)


class SessionRegistryTests(SynchronousTestCase):
    """
    Tests for L{SessionRegistry}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[tuple[str, str]] = []
        self.consumed: list[Session] = []
        self.registry = self.make()

    def make(self, retain: float = 0.0, maxSessions: int = DEFAULT_MAX_SESSIONS) -> SessionRegistry:
        def opened(name: str, slot: SessionSlot) -> None:
            self.events.append(("opened", name))

        def closed(name: str, slot: SessionSlot) -> None:
            self.events.append(("closed", name))

        return SessionRegistry(
            opened, closed, self.consumed.append, self.clock.seconds, retain, self.clock, maxSessions
        )

    def test_interface(self) -> None:
        """
        L{SessionRegistry} provides L{ISessionClaims}.
        """
        self.assertTrue(verifyObject(ISessionClaims, self.registry))

    def test_defaultMaximum(self) -> None:
        """
        By default 64 sessions may be received at once.
        """
        self.assertEqual(SessionRegistry().maxSessions, 64)

    def test_claimOpensSlot(self) -> None:
        """
        Claiming a new name opens its slot (the hook runs before the claim
        returns) and returns that slot's session, receiving, named.
        """
        session = self.registry.claim("web-1")
        self.assertEqual(self.events, [("opened", "web-1")])
        self.assertEqual((session.name, session.state), ("web-1", SessionState.RECEIVING))
        self.assertIs(self.registry.slots["web-1"].current, session)
        self.assertEqual(self.registry.sessions, [session])
        self.assertEqual(self.registry.inProgress, 1)

    def test_independent(self) -> None:
        """
        Two names get two sessions; one failing leaves the other untouched,
        receiving and readable.
        """
        a = self.registry.claim("a")
        b = self.registry.claim("b")
        self.assertIsNot(a, b)
        b.addVerified(_image("x.img", b"bbb"))
        a.fail("link lost")
        self.assertIs(b.state, SessionState.RECEIVING)
        self.assertEqual(self.consumed, [a])
        self.assertEqual(list(self.registry.slots), ["b"])
        self.assertEqual(self.events, [("opened", "a"), ("opened", "b"), ("closed", "a")])
        restore = self.registry.slots["b"].attachRestore()
        self.assertIs(restore, b)
        image = self.successResultOf(restore.waitImage("", "x.img"))
        assert image is not None
        self.assertEqual(image.data.tobytes(), b"bbb")

    def test_sameNameInProgress(self) -> None:
        """
        A name whose session is receiving is refused, and that session is
        left alone.
        """
        session = self.registry.claim("web-1")
        error = self.assertRaises(SessionError, self.registry.claim, "web-1")
        self.assertIn("still in progress", str(error))
        self.assertIs(session.state, SessionState.RECEIVING)
        self.assertEqual(self.events, [("opened", "web-1")])

    def test_sameNameWhileKept(self) -> None:
        """
        A name whose complete session waits for its restore is refused.
        """
        self.registry.claim("web-1").complete()
        error = self.assertRaises(SessionError, self.registry.claim, "web-1")
        self.assertIn("complete", str(error))

    def test_sameNameAfterRelease(self) -> None:
        """
        Once a complete session was restored and released, its slot is closed
        and the name may start again, in a new slot.
        """
        first = self.registry.claim("web-1")
        first.complete()
        slot = self.registry.slots["web-1"]
        slot.detachRestore(slot.attachRestore())
        self.assertEqual(self.consumed, [first])
        self.assertEqual(self.registry.slots, {})
        second = self.registry.claim("web-1")
        self.assertIsNot(second, first)
        self.assertIsNot(self.registry.slots["web-1"], slot)
        self.assertEqual(
            self.events, [("opened", "web-1"), ("closed", "web-1"), ("opened", "web-1")]
        )

    def test_sameNameAfterFailure(self) -> None:
        """
        A failed session's name may start again at once, in the same slot
        (its directory stays), even while a restore still reads the failed
        one; that restore's leaving does not close the slot.
        """
        registry = self.make(retain=30)
        failed = registry.claim("web-1")
        slot = registry.slots["web-1"]
        restore = slot.attachRestore()
        failed.fail("checksum mismatch")
        again = registry.claim("web-1")
        self.assertIsNot(again, failed)
        self.assertIs(registry.slots["web-1"], slot)
        slot.detachRestore(restore)
        self.clock.advance(30)
        self.assertEqual(self.consumed, [failed])
        self.assertIs(registry.slots["web-1"].current, again)
        self.assertEqual(self.events, [("opened", "web-1")])

    def test_retain(self) -> None:
        """
        A complete session's slot is closed C{retain} seconds after its last
        restore left; a second restore meanwhile reads it again.
        """
        registry = self.make(retain=10)
        session = registry.claim("web-1")
        session.addVerified(_image("x.img", b"x"))
        session.complete()
        slot = registry.slots["web-1"]
        slot.detachRestore(slot.attachRestore())
        self.clock.advance(9)
        second = slot.attachRestore()
        self.assertIs(second, session)
        self.assertIsNotNone(self.successResultOf(second.waitImage("", "x.img")))
        slot.detachRestore(second)
        self.clock.advance(9)
        self.assertIn("web-1", registry.slots)
        self.clock.advance(1)
        self.assertNotIn("web-1", registry.slots)
        self.assertEqual(self.consumed, [session])
        self.assertEqual(session.images, {})
        self.assertEqual(self.events[-1], ("closed", "web-1"))

    def test_failedRemovedAfterRetain(self) -> None:
        """
        A failed session no restore reads is closed C{retain} seconds after
        it failed; a restore attaching before then is told nothing exists.
        """
        registry = self.make(retain=5)
        session = registry.claim("web-1")
        session.fail("broken")
        slot = registry.slots["web-1"]
        self.assertIsNone(self.successResultOf(slot.attachRestore().waitImage("", "inventory.img")))
        slot.detachRestore(session)
        self.clock.advance(5)
        self.assertEqual(registry.slots, {})
        self.assertEqual(self.consumed, [session])

    def test_maxSessions(self) -> None:
        """
        Beyond C{maxSessions} sessions in progress a claim is refused naming
        the option, and nothing is opened; once one is over, a claim
        succeeds again.
        """
        registry = self.make(maxSessions=2)
        a = registry.claim("a")
        registry.claim("b")
        error = self.assertRaises(SessionError, registry.claim, "c")
        self.assertIn("--max-sessions", str(error))
        self.assertNotIn(("opened", "c"), self.events)
        a.complete()
        self.assertEqual(registry.claim("c").state, SessionState.RECEIVING)

    def test_completeNotCounted(self) -> None:
        """
        Only sessions being received count against C{maxSessions}: a
        complete one waiting for its restore does not.
        """
        registry = self.make(maxSessions=1)
        registry.claim("a").complete()
        self.assertEqual(registry.claim("b").state, SessionState.RECEIVING)

    def test_hostileNames(self) -> None:
        """
        Names that are not a safe directory name are refused with
        L{SessionError}, and nothing is opened.
        """
        for name in ["", ".", "..", ".hidden", "../etc", "a/b", "/abs", "nul\0", "x" * 256]:
            self.assertRaises(SessionError, self.registry.claim, name)
        self.assertEqual(self.events, [])
        self.assertEqual(self.registry.slots, {})

    def test_openFails(self) -> None:
        """
        If the open hook fails, the claim is refused with its reason and the
        name is left free.
        """
        def opened(name: str, slot: SessionSlot) -> None:
            raise OSError("No space left on device")

        registry = SessionRegistry(opened)
        error = self.assertRaises(SessionError, registry.claim, "web-1")
        self.assertIn("No space left on device", str(error))
        self.assertEqual(registry.slots, {})
        self.flushLoggedErrors(OSError)

    def test_openRefuses(self) -> None:
        """
        A L{SessionError} from the open hook refuses the claim as it is.
        """
        def opened(name: str, slot: SessionSlot) -> None:
            raise SessionError("cannot listen")

        error = self.assertRaises(SessionError, SessionRegistry(opened).claim, "web-1")
        self.assertEqual(str(error), "cannot listen")

    def test_needsTimer(self) -> None:
        """
        A positive retention time without a timer is refused.
        """
        self.assertRaises(ValueError, SessionRegistry, retain=1)

    def test_stop(self) -> None:
        """
        Stopping consumes the sessions waiting for their retention time and
        closes their slots; a session failing afterwards is not kept, nor
        is a slot opened afterwards.
        """
        registry = self.make(retain=60)
        kept = registry.claim("kept")
        kept.complete()
        slot = registry.slots["kept"]
        slot.detachRestore(slot.attachRestore())
        receiving = registry.claim("receiving")
        registry.stop()
        self.assertEqual(self.consumed, [kept])
        self.assertEqual(list(registry.slots), ["receiving"])
        receiving.fail("the cache is shutting down")
        self.assertEqual(self.consumed, [kept, receiving])
        self.assertEqual(registry.slots, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        registry.claim("late").fail("x")
        self.assertEqual(registry.slots, {})


class RegistryClaimObserverTests(SynchronousTestCase):
    """
    The registry tells its claim observers (the cache's statistics) of every
    session claimed under any name, and of none it refused.
    """

    def test_observed(self) -> None:
        """
        Each claimed session is told once, named and receiving; a refused
        claim is not.
        """
        registry = SessionRegistry()
        claimed: list[tuple[Optional[str], SessionState]] = []
        registry.addClaimObserver(lambda s: claimed.append((s.name, s.state)))
        registry.claim("one")
        registry.claim("two")
        self.assertRaises(SessionError, registry.claim, "one")
        self.assertEqual(claimed, [("one", SessionState.RECEIVING), ("two", SessionState.RECEIVING)])
