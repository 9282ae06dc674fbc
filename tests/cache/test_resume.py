"""
Tests for L{imgrelay.cache.resume}: the resume table alone, with stand-in
links and a L{Clock}. The whole exchange, a real proxy resuming over cut
connections, is in L{tests.scenarios.test_resume}.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgrelay.cache.interfaces import IResumableLink, IResumeTable
from imgrelay.cache.linkstate import CacheLinkState
from imgrelay.cache.resume import DEFAULT_PROGRESS_STEP, DEFAULT_RESUME_TIMEOUT, CacheStream, ResumeTable
from imgrelay.core.errors import ProtocolError
from imgrelay.core.store import SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.wire.link import VERSION, ProxyMessage, frame, proxyMessageFramer
from imgrelay.wire.pb import link_pb2
from tests.cache.helpers import done

TOKEN = b"t" * 16


@implementer(IResumableLink)
class _Link:
    """
    A link that remembers being replaced.
    """

    def __init__(self) -> None:
        self.dropped = False

    def replaced(self) -> None:
        self.dropped = True


def _hello(session: str = "mig", token: bytes = TOKEN) -> link_pb2.Hello:
    return link_pb2.Hello(version=VERSION, session=session, resume=True, resume_token=token)


class ResumeTableTests(SynchronousTestCase):
    """
    L{ResumeTable} keeps each session's stream while its proxy dials again.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.slot = SessionSlot(clock=self.clock.seconds)
        self.table = ResumeTable(DEFAULT_RESUME_TIMEOUT, self.clock)

    def start(self, link: _Link, token: bytes = TOKEN, proxySends: bytes = b"") -> CacheStream:
        """
        C{link} starts session C{mig} under C{token}; the proxy then sends
        C{proxySends} on it.
        """
        state = CacheLinkState(self.slot, self.clock.seconds)
        hello = frame(ProxyMessage(hello=link_pb2.Hello(version=VERSION, session="mig", resume_token=token)))
        for event in list(proxyMessageFramer().feed(hello + proxySends)):
            state.received(event)
        stream = CacheStream(state, token, 0)
        self.table.started(stream, link)
        return stream

    def test_interface(self) -> None:
        """
        L{ResumeTable} is an L{IResumeTable}, and the stand-in link here an
        L{IResumableLink}.
        """
        self.assertTrue(verifyObject(IResumeTable, self.table))
        self.assertTrue(verifyObject(IResumableLink, _Link()))

    def test_started(self) -> None:
        """
        A started session's stream is kept under its name, carried by the
        link that started it.
        """
        link = _Link()
        stream = self.start(link)
        self.assertEqual(self.table.streams, {"mig": stream})
        self.assertIs(stream.link, link)

    def test_knows(self) -> None:
        """
        A hello naming a kept session with its token is known; with another
        token or another name, not.
        """
        self.start(_Link())
        self.assertTrue(self.table.knows(_hello()))
        self.assertFalse(self.table.knows(_hello(token=b"x" * 16)))
        self.assertFalse(self.table.knows(_hello("other")))

    def test_knowsNoToken(self) -> None:
        """
        A session its proxy started without a token cannot be resumed.
        """
        self.start(_Link(), token=b"")
        self.assertFalse(self.table.knows(_hello(token=b"")))

    def test_resume(self) -> None:
        """
        A resume hands the new link the session's stream, drops the link
        that carried it, and accepts at the byte the stream was taken to.
        """
        old, new = _Link(), _Link()
        stream = self.start(old)
        stream.taken = 1234
        resumed, replies = self.table.resume(_hello(), new)
        self.assertIs(resumed, stream)
        self.assertIs(stream.link, new)
        self.assertTrue(old.dropped)
        self.assertEqual([m.WhichOneof("kind") for m in replies], ["accept"])
        self.assertEqual(replies[0].accept.received, 1234)

    def test_resumeComplete(self) -> None:
        """
        A resume of a session already complete confirms it again: the proxy
        did not get the first confirmation.
        """
        self.start(_Link(), proxySends=done([]))
        _, replies = self.table.resume(_hello(), _Link())
        self.assertEqual([m.WhichOneof("kind") for m in replies], ["accept", "done_ok"])

    def test_resumeRefused(self) -> None:
        """
        A resume of a session not kept here, with the wrong token, or of a
        failed session is refused, naming why.
        """
        e = self.assertRaises(ProtocolError, self.table.resume, _hello(), _Link())
        self.assertIn("no session 'mig' to resume here", str(e))
        stream = self.start(_Link())
        e = self.assertRaises(ProtocolError, self.table.resume, _hello(token=b"x" * 16), _Link())
        self.assertIn("wrong resume token for session 'mig'", str(e))
        stream.session.fail("broken")
        e = self.assertRaises(ProtocolError, self.table.resume, _hello(), _Link())
        self.assertIn("session 'mig' failed: broken", str(e))

    def test_linkLostWaits(self) -> None:
        """
        A session whose link is lost waits the resume timeout for its
        proxy, then fails naming the timeout and why the link was lost, and
        is forgotten.
        """
        link = _Link()
        stream = self.start(link)
        self.table.linkLost(stream, link, Failure(ConnectionLost("cut")))
        self.assertIsNone(stream.link)
        self.clock.advance(DEFAULT_RESUME_TIMEOUT - 1)
        self.assertIs(stream.session.state, SessionState.RECEIVING)
        self.assertIn("mig", self.table.streams)
        self.clock.advance(1)
        self.assertIs(stream.session.state, SessionState.FAILED)
        self.assertIn("did not resume the session within 120 s", stream.session.failure or "")
        self.assertIn("cut", stream.session.failure or "")
        self.assertEqual(self.table.streams, {})

    def test_resumeInTime(self) -> None:
        """
        A resume before the timeout cancels it.
        """
        link = _Link()
        stream = self.start(link)
        self.table.linkLost(stream, link, Failure(ConnectionLost()))
        self.table.resume(_hello(), _Link())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(DEFAULT_RESUME_TIMEOUT)
        self.assertIs(stream.session.state, SessionState.RECEIVING)

    def test_closedAfterConfirmation(self) -> None:
        """
        A complete session whose proxy closed the link cleanly is forgotten
        at once: there is nothing to resume.
        """
        link = _Link()
        stream = self.start(link, proxySends=done([]))
        self.table.linkLost(stream, link, Failure(ConnectionDone()))
        self.assertEqual(self.table.streams, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_replacedLinkLost(self) -> None:
        """
        The loss of a link another one replaced leaves the session to the
        new link.
        """
        old, new = _Link(), _Link()
        stream = self.start(old)
        self.table.resume(_hello(), new)
        self.table.linkLost(stream, old, Failure(ConnectionLost()))
        self.assertIs(stream.link, new)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failAll(self) -> None:
        """
        L{ResumeTable.failAll} fails every session still in progress with
        the reason given, cancels their timers and forgets them.
        """
        link = _Link()
        stream = self.start(link)
        self.table.linkLost(stream, link, Failure(ConnectionLost()))
        self.table.failAll("the cache is shutting down")
        self.assertEqual(stream.session.failure, "the cache is shutting down")
        self.assertEqual(self.table.streams, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CacheStreamTests(SynchronousTestCase):
    """
    L{CacheStream} reports progress a sixteenth of the proxy's window at a
    time.
    """

    def stream(self, window: int) -> CacheStream:
        """
        @return: A stream for a proxy with C{window}.
        """
        state = CacheLinkState(SessionSlot(), Clock().seconds)
        for event in list(proxyMessageFramer().feed(frame(ProxyMessage(hello=_hello())))):
            state.received(event)
        return CacheStream(state, TOKEN, window)

    def test_progress(self) -> None:
        """
        A report comes once a sixteenth of the window was taken since the
        last one, and says how much was taken.
        """
        stream = self.stream(32 << 20)
        stream.taken = (2 << 20) - 1
        self.assertIsNone(stream.progress())
        stream.taken = 2 << 20
        report = stream.progress()
        assert report is not None
        self.assertEqual(report.progress.received, 2 << 20)
        self.assertIsNone(stream.progress())

    def test_steps(self) -> None:
        """
        Without a window, progress is reported every
        L{DEFAULT_PROGRESS_STEP} bytes; with a small one, every MiB at most.
        """
        for window, step in [(0, DEFAULT_PROGRESS_STEP), (1 << 20, 1 << 20)]:
            stream = self.stream(window)
            stream.taken = step - 1
            self.assertIsNone(stream.progress())
            stream.taken = step
            self.assertIsNotNone(stream.progress())
