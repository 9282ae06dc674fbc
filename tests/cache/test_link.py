"""
Tests for L{imgrelay.cache.link}: the cache's link protocol reading a
proxy's hello and noticing the link close, driven with the proxy's bytes
over a L{StringTransport}, both all at once and one byte at a time; what it
is given to work with; and its factory.
"""

from __future__ import annotations

import struct

from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgrelay.cache.interfaces import IOpenLinks, IResumableLink, IResumeTable
from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.cache.listener import CacheLinkFactory
from imgrelay.cache.memory import IBoundReader
from imgrelay.cache.resume import DEFAULT_RESUME_TIMEOUT, CacheStream
from imgrelay.core.errors import ProtocolError
from imgrelay.core.store import SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.transport.receiver import IPayloadReceiver
from imgrelay.wire.framing import DEFAULT_MAX_HEADER
from imgrelay.wire.framing import HeaderReceived
from imgrelay.wire.link import CacheMessage, ProxyMessage, cacheMessageFramer, chunkHeader, frame
from imgrelay.wire.pb import link_pb2
from tests.cache.helpers import LinkTestMixin, chunk, done, hello, imageClose, imageOpen, wholeImage


def _tokenHello(resume: bool, session: str = "mig") -> bytes:
    """
    @return: A framed hello with a resume token: a first one, or a resume.
    """
    return frame(ProxyMessage(hello=link_pb2.Hello(version=1, session=session, resume=resume, resume_token=b"t" * 16)))


class _CacheLinkMixin(LinkTestMixin):
    """
    Tests of L{CacheLinkProtocol}'s own work, whatever way the bytes
    arrive; a subclass says how in L{feed}.
    """

    # Reading the hello.

    def test_firstNotHello(self) -> None:
        """
        A link that does not begin with hello is refused.
        """
        self.deliver(imageOpen(1, "a.img"))
        self.assertRefused("expected hello, got open")

    def test_malformedBeforeHello(self) -> None:
        """
        Bytes that are not a link message, first thing, are refused.
        """
        self.deliver(struct.pack("!I", 3) + b"\xff\xff\xff")
        self.assertRefused("undecodable header")

    def test_oversizedBeforeHello(self) -> None:
        """
        A length prefix over 64 KiB first thing is refused without waiting
        for the header.
        """
        self.deliver(struct.pack("!I", DEFAULT_MAX_HEADER + 1))
        self.assertRefused(f"header of {DEFAULT_MAX_HEADER + 1} bytes")

    # The link closing.

    def test_lostAfterDone(self) -> None:
        """
        The link closing after done_ok leaves the session complete with its
        images.
        """
        sent = [("", "a.img", b"aaaa")]
        self.deliver(hello(), wholeImage(1, "a.img", b"aaaa"), done(sent))
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.session.state, SessionState.COMPLETE)
        self.assertEqual(self.session.images[("", "a.img")].data.tobytes(), b"aaaa")
        self.assertEqual(self.errorsLogged(), [])

    def test_lostMidImage(self) -> None:
        """
        The link closing in the middle of an image fails the session: its
        waiters are told the image does not exist, the half image never
        appears, and images already verified are dropped.
        """
        restore = self.slot.attachRestore()
        waiting = restore.waitImage("", "b.img")
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), imageOpen(2, "b.img"), chunk(2, b"half"))
        self.protocol.connectionLost(Failure(ConnectionLost("peer went away")))
        self.assertIs(self.session.state, SessionState.FAILED)
        self.assertIn("link lost before the session completed", self.session.failure or "")
        self.assertIn("peer went away", self.session.failure or "")
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIsNone(self.successResultOf(restore.waitImage("", "b.img")))
        self.assertIsNone(self.successResultOf(restore.waitImage("", "a.img")))
        self.assertEqual(self.session.images, {})
        self.assertErrorLogged("link lost before the session completed")

    def test_lostMidChunk(self) -> None:
        """
        The link closing in the middle of a chunk's payload fails the
        session.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), chunkHeader(1, 10), b"12345")
        self.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertIs(self.session.state, SessionState.FAILED)
        self.assertEqual(self.session.failureKind, "other")
        self.assertEqual(self.session.images, {})

    def test_lostBeforeHello(self) -> None:
        """
        A link closing before hello touches no session.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.slot.current.state, SessionState.WAITING)
        self.assertEqual(self.errorsLogged(), [])

    def test_dataAfterFailureIgnored(self) -> None:
        """
        Once a link failed, whatever else arrives on it is ignored.
        """
        self.deliver(hello(), chunk(9, b"x"))
        before = self.transport.value()
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"))
        self.assertEqual(self.transport.value(), before)
        self.assertIs(self.session.state, SessionState.FAILED)


class CacheLinkWholeTests(_CacheLinkMixin, SynchronousTestCase):
    """
    L{CacheLinkProtocol} with everything the proxy sends arriving at once.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        """
        Deliver C{data} in one call.
        """
        protocol.dataReceived(data)


class CacheLinkByteTests(_CacheLinkMixin, SynchronousTestCase):
    """
    L{CacheLinkProtocol} with what the proxy sends arriving one byte at a
    time.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        """
        Deliver C{data} one byte per call.
        """
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])


class ReceiveIntoTests(SynchronousTestCase):
    """
    Payload received straight into an image's memory (the plain TCP path)
    is counted too.
    """

    def test_chunkFilledCounted(self) -> None:
        """
        Bytes received through L{CacheLinkProtocol.payloadTarget} and
        L{CacheLinkProtocol.payloadReceived} count as received, and the
        image they make is verified.
        """
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(hello() + imageOpen(1, "a.img") + chunkHeader(1, 6))
        session = protocol.state.session
        assert session is not None
        for piece in (b"abcd", b"ef"):
            target = protocol.payloadTarget()
            assert target is not None
            target[: len(piece)] = piece
            protocol.payloadReceived(len(piece))
            self.assertEqual(session.received, 4 if piece == b"abcd" else 6)
        protocol.dataReceived(imageClose(1, b"abcdef"))
        self.assertEqual(session.images[("", "a.img")].data.tobytes(), b"abcdef")


class CacheLinkFactoryTests(SynchronousTestCase):
    """
    Tests for L{CacheLinkFactory}.
    """

    def test_buildProtocol(self) -> None:
        """
        Each protocol the factory builds fills the factory's slot, and reads
        the factory's clock.
        """
        clock = Clock()
        clock.advance(9)
        slot = SessionSlot(clock=clock.seconds)
        factory = CacheLinkFactory(slot, clock.seconds)
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, CacheLinkProtocol)
        self.assertIs(protocol.factory, factory)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(hello("mig"))
        self.assertIs(protocol.state.session, slot.current)
        self.assertEqual(slot.current.started, 9)

    def test_buildProtocolShares(self) -> None:
        """
        Each protocol the factory builds keeps its session in the factory's
        resume table, is counted open until it closes, and gets the
        factory's idle timeout.
        """
        reactor = MemoryReactorClock()
        factory = CacheLinkFactory(SessionSlot(), reactor.seconds, reactor, idleTimeout=7)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual(factory.links, {protocol})
        self.assertEqual([c.getTime() for c in reactor.getDelayedCalls()], [7])
        protocol.dataReceived(hello("mig"))
        self.assertIs(factory.resumes.streams["mig"], protocol.stream)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(factory.links, set())



class WhenIdleTests(SynchronousTestCase):
    """
    L{CacheLinkFactory.whenIdle} tells when no link is open: a oneshot
    cache waits for it so its last answer reaches the proxy before it exits.
    """

    def test_whenIdle(self) -> None:
        """
        It fires at once with no link, and otherwise once the last link
        closed.
        """
        factory = CacheLinkFactory(SessionSlot(), Clock().seconds)
        self.successResultOf(factory.whenIdle())
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        idle = factory.whenIdle()
        self.assertNoResult(idle)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(idle)

    def test_heartbeat(self) -> None:
        """
        With a heartbeat, the accept promises it and the link reports how
        much of the stream it took every heartbeat, however quiet; its timer
        ends with the link.
        """
        clock = Clock()
        factory = CacheLinkFactory(SessionSlot(clock=clock.seconds), clock.seconds, clock, heartbeat=2.0)
        protocol, transport = factory.buildProtocol(None), StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(_tokenHello(resume=False))

        def said() -> list[CacheMessage]:
            messages = [e.message for e in cacheMessageFramer().feed(transport.value()) if isinstance(e, HeaderReceived)]
            transport.clear()
            return messages

        (accept,) = said()
        self.assertEqual(accept.accept.heartbeat, 2.0)
        clock.advance(1.9)
        self.assertEqual(said(), [])
        clock.advance(0.1)
        self.assertEqual(said(), [CacheMessage(progress=link_pb2.Progress(received=0))])
        protocol.dataReceived(wholeImage(1, "a.img", b"abc"))
        said()
        clock.advance(2)
        (beat,) = said()
        self.assertEqual(beat.progress.received, len(wholeImage(1, "a.img", b"abc")))
        protocol.connectionLost(Failure(ConnectionLost("gone")))
        # Only the wait for a resume is left to run.
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [clock.seconds() + DEFAULT_RESUME_TIMEOUT])

    def test_confirmedLinkLeftOpen(self) -> None:
        """
        A link the proxy leaves open for the idle timeout after the cache
        confirmed its session is closed by the cache, and the session waits
        for a resume, should the proxy not have had the answer; a proxy that
        closes at once leaves nothing to run.
        """
        for proxyCloses in (False, True):
            clock = Clock()
            factory = CacheLinkFactory(
                SessionSlot(clock=clock.seconds), clock.seconds, clock, resumeTimeout=7, idleTimeout=5,
            )
            protocol, transport = factory.buildProtocol(None), StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(_tokenHello(resume=False) + wholeImage(1, "a.img", b"abc"))
            protocol.dataReceived(done([("", "a.img", b"abc")]))
            idle = factory.whenIdle()
            if proxyCloses:
                protocol.connectionLost(Failure(ConnectionDone()))
                self.successResultOf(idle)
                self.assertEqual(clock.getDelayedCalls(), [])
                continue
            clock.advance(4.9)
            self.assertFalse(transport.disconnecting)
            clock.advance(0.1)
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(Failure(ConnectionAborted()))
            self.assertNoResult(idle)
            clock.advance(7)
            self.successResultOf(idle)

    def test_noHeartbeat(self) -> None:
        """
        Without a heartbeat (the default), the accept promises none and a
        quiet link says nothing.
        """
        clock = Clock()
        factory = CacheLinkFactory(SessionSlot(clock=clock.seconds), clock.seconds, clock)
        protocol, transport = factory.buildProtocol(None), StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(_tokenHello(resume=False))
        (accept,) = [e.message for e in cacheMessageFramer().feed(transport.value()) if isinstance(e, HeaderReceived)]
        self.assertEqual(accept.accept.heartbeat, 0.0)
        transport.clear()
        clock.advance(3600)
        self.assertEqual(transport.value(), b"")

    def test_whenIdleWaitsForResumeAfterConfirmation(self) -> None:
        """
        A link reset after the session completed (the proxy may not have
        had the confirmation) leaves the session waiting for a resume:
        L{CacheLinkFactory.whenIdle} fires once the proxy resumed, heard the
        confirmation again and closed, or once the resume timeout passed.
        """
        for resumed in (True, False):
            clock = Clock()
            factory = CacheLinkFactory(SessionSlot(clock=clock.seconds), clock.seconds, clock, resumeTimeout=5)
            first, firstTransport = factory.buildProtocol(None), StringTransport()
            first.makeConnection(firstTransport)
            first.dataReceived(_tokenHello(resume=False) + wholeImage(1, "a.img", b"abc"))
            first.dataReceived(done([("", "a.img", b"abc")]))
            session = first.state.session
            assert session is not None
            self.assertIs(session.state, SessionState.COMPLETE)
            first.connectionLost(Failure(ConnectionLost("reset")))
            idle = factory.whenIdle()
            self.assertNoResult(idle)
            if resumed:
                second, secondTransport = factory.buildProtocol(None), StringTransport()
                second.makeConnection(secondTransport)
                second.dataReceived(_tokenHello(resume=True))
                kinds = [
                    e.message.WhichOneof("kind")
                    for e in cacheMessageFramer().feed(secondTransport.value())
                    if isinstance(e, HeaderReceived)
                ]
                self.assertEqual(kinds, ["accept", "done_ok"])
                self.assertNoResult(idle)
                second.connectionLost(Failure(ConnectionDone()))
            else:
                clock.advance(4.9)
                self.assertNoResult(idle)
                clock.advance(0.1)
            self.successResultOf(idle)
            self.assertIs(session.state, SessionState.COMPLETE)

    def test_whenIdleAfterReplacedLink(self) -> None:
        """
        A link replaced by a resuming one while its own close is still
        pending counts as open until it closes: after the session completes
        on the new link, L{CacheLinkFactory.whenIdle} fires once both links
        closed, whichever closes first.
        """
        for oldClosesFirst in (True, False):
            clock = Clock()
            factory = CacheLinkFactory(SessionSlot(clock=clock.seconds), clock.seconds, clock)
            old, oldTransport = factory.buildProtocol(None), StringTransport()
            old.makeConnection(oldTransport)
            old.dataReceived(_tokenHello(resume=False) + wholeImage(1, "a.img", b"abc"))
            new, newTransport = factory.buildProtocol(None), StringTransport()
            new.makeConnection(newTransport)
            new.dataReceived(_tokenHello(resume=True))
            # The old link is being dropped; its connectionLost is to come.
            self.assertTrue(oldTransport.disconnecting)
            self.assertEqual(factory.links, {old, new})
            new.dataReceived(done([("", "a.img", b"abc")]))
            session = new.state.session
            assert session is not None
            self.assertIs(session.state, SessionState.COMPLETE)
            idle = factory.whenIdle()
            first, second = [(old, ConnectionLost("aborted")), (new, ConnectionDone())][:: 1 if oldClosesFirst else -1]
            first[0].connectionLost(Failure(first[1]))
            self.assertNoResult(idle)
            second[0].connectionLost(Failure(second[1]))
            self.successResultOf(idle)
            self.assertEqual(factory.links, set())
            self.assertEqual(clock.getDelayedCalls(), [])


@implementer(IResumeTable)
class _RecordingTable:
    """
    A resume table that records what a link asks of it, and knows no
    session.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def started(self, stream: CacheStream, link: IResumableLink) -> None:
        self.calls.append(("started", stream.session.name))
        stream.link = link

    def knows(self, hello: link_pb2.Hello) -> bool:
        self.calls.append(("knows", hello.session))
        return False

    def resume(self, hello: link_pb2.Hello, link: IResumableLink) -> tuple[CacheStream, list[CacheMessage]]:
        self.calls.append(("resume", hello.session))
        raise ProtocolError(f"no session {hello.session!r} to resume here")

    def linkLost(self, stream: CacheStream, link: IResumableLink, reason: Failure) -> None:
        self.calls.append(("linkLost", reason.value))


@implementer(IOpenLinks)
class _RecordingLinks:
    """
    Counts nothing; records each link that says it closed.
    """

    def __init__(self) -> None:
        self.closed: list[object] = []

    def linkClosed(self, link: object) -> None:
        self.closed.append(link)




class CollaboratorTests(SynchronousTestCase):
    """
    A L{CacheLinkProtocol} works with what its constructor is given (the
    factory passes its own), through interfaces.
    """

    def test_interfaces(self) -> None:
        """
        The protocol is a resumable link, a payload receiver and a reader
        the memory bound can hold; the factory counts open links and its
        resume table is one; the test doubles here are what they claim.
        """
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds)
        for interface in (IResumableLink, IPayloadReceiver, IBoundReader):
            self.assertTrue(verifyObject(interface, protocol))
        factory = CacheLinkFactory(SessionSlot(), Clock().seconds)
        self.assertTrue(verifyObject(IOpenLinks, factory))
        self.assertTrue(verifyObject(IResumeTable, factory.resumes))
        self.assertTrue(verifyObject(IResumeTable, _RecordingTable()))
        self.assertTrue(verifyObject(IOpenLinks, _RecordingLinks()))

    def test_givenTableAndLinks(self) -> None:
        """
        Without a factory, a link given a resume table and open links asks
        the table whether a hello resumes a session, starts its new session
        there, and on close tells the table, then the open links.
        """
        table, links = _RecordingTable(), _RecordingLinks()
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds, resumes=table, links=links)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(hello("mig"))
        self.assertEqual(table.calls, [("knows", "mig"), ("started", "mig")])
        lost = ConnectionLost("gone")
        protocol.connectionLost(Failure(lost))
        self.assertEqual(table.calls[-1], ("linkLost", lost))
        self.assertEqual(links.closed, [protocol])
        # The table, not the link, decides what becomes of the session.
        session = protocol.state.session
        assert session is not None
        self.assertIs(session.state, SessionState.RECEIVING)

    def test_resumeAsksTable(self) -> None:
        """
        A resuming hello goes to the table, whose refusal is the link's.
        """
        table = _RecordingTable()
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds, resumes=table)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(_tokenHello(resume=True))
        self.assertEqual(table.calls, [("resume", "mig")])
        self.assertIn("no session 'mig' to resume here", CacheMessage.FromString(transport.value()[4:]).refuse.reason)

    def test_noTableNoResume(self) -> None:
        """
        A link given no resume table refuses a resuming hello.
        """
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(_tokenHello(resume=True))
        self.assertEqual(
            CacheMessage.FromString(transport.value()[4:]).refuse.reason, "this cache cannot resume sessions"
        )

    def test_idleTimeout(self) -> None:
        """
        A link given an idle timeout refuses a peer silent that long, on
        the reactor it was given; one given none sets no timer.
        """
        reactor = MemoryReactorClock()
        timed = CacheLinkProtocol(SessionSlot(), reactor.seconds, reactor, idleTimeout=5)
        timedTransport = StringTransport()
        timed.makeConnection(timedTransport)
        reactor.advance(5)
        self.assertEqual(
            CacheMessage.FromString(timedTransport.value()[4:]).refuse.reason, "no hello within 5 s (--idle-timeout)"
        )
        untimed = CacheLinkProtocol(SessionSlot(), reactor.seconds, reactor)
        untimed.makeConnection(StringTransport())
        self.assertEqual(reactor.getDelayedCalls(), [])
