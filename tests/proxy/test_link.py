"""
Tests for L{imgrelay.proxy.link}: the proxy's end of the link alone over a
L{StringTransport}, and paired with the cache's end through L{iosim}.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from crc32c import crc32c
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.core.errors import SessionError
from imgrelay.wire.framing import HeaderReceived, PayloadChunk, PayloadDone
from imgrelay.wire.link import (
    MAX_CHUNK,
    VERSION,
    CacheMessage,
    ProxyMessage,
    frame,
    proxyMessageFramer,
)
from imgrelay.wire.pb import link_pb2
from imgrelay.proxy.stream import DEFAULT_WINDOW, IConnection
from imgrelay.proxy.link import ProxyLinkFactory, ProxyLinkProtocol
from imgrelay.proxy.session import ProxySession
from imgrelay.proxy.interfaces import ILinkSender, SessionOutcome
from imgrelay.core.store import SessionState
from imgrelay.core.slot import SessionSlot
from tests.proxy.test_session import FakeProducer


def cacheBytes(**kwargs: Any) -> bytes:
    """
    @return: A framed message from the cache.
    """
    return frame(CacheMessage(**kwargs))


ACCEPT = cacheBytes(accept=link_pb2.Accept())
DONE_OK = cacheBytes(done_ok=link_pb2.DoneOk())


def ack(image: int) -> bytes:
    """
    @return: A framed ImageAck.
    """
    return cacheBytes(ack=link_pb2.ImageAck(image=image))


def parseSent(data: bytes) -> list[object]:
    """
    Parse what the proxy wrote.

    @return: Each message, and the payload of each chunk as C{bytes}.
    """
    framer = proxyMessageFramer()
    out: list[object] = []
    payload = b""
    for event in framer.feed(data):
        if isinstance(event, HeaderReceived):
            out.append(event.message)
        elif isinstance(event, PayloadChunk):
            payload += bytes(event.data)
        elif isinstance(event, PayloadDone):
            out.append(payload)
            payload = b""
    assert framer.atBoundary
    return out


class ProxyLinkProtocolTests(SynchronousTestCase):
    """
    Tests for L{ProxyLinkProtocol} over a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.session = ProxySession("mig", self.clock.seconds)
        self.factory = ProxyLinkFactory(self.session)
        self.stream = self.factory.stream
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def sent(self) -> list[object]:
        """
        @return: What the proxy sent since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return parseSent(data)

    def feedBytewise(self, data: bytes) -> None:
        """
        Deliver the cache's C{data} one byte at a time.
        """
        for i in range(len(data)):
            self.protocol.dataReceived(data[i : i + 1])

    def test_interfaces(self) -> None:
        """
        L{ProxyLinkProtocol} provides L{IConnection} and L{IPushProducer};
        the stream it carries is the session's L{ILinkSender}.
        """
        self.assertTrue(verifyObject(IConnection, self.protocol))
        self.assertTrue(verifyObject(IPushProducer, self.protocol))
        self.assertTrue(verifyObject(ILinkSender, self.stream))

    def test_deliveryWithoutSocket(self) -> None:
        """
        A transport with no TCP socket under it has no kernel measure of
        its delivery (the policy then measures the link by the cache's
        acknowledgements).
        """
        self.assertIsNone(self.protocol.delivery())
        self.assertIsNone(self.stream.delivery())

    def test_hello(self) -> None:
        """
        On connection the proxy says hello with its version, session name,
        resume token and window (not resuming), and registers itself as the
        transport's streaming producer.
        """
        self.assertEqual(
            self.sent(),
            [
                ProxyMessage(
                    hello=link_pb2.Hello(
                        version=VERSION, session="mig", resume_token=self.stream.token,
                        resume=False, window=DEFAULT_WINDOW,
                    )
                )
            ],
        )
        self.assertEqual(len(self.stream.token), 16)
        self.assertIs(self.transport.producer, self.protocol)
        self.assertTrue(self.transport.streaming)

    def test_accept(self) -> None:
        """
        The cache's accept fires the session's C{ready} and unpauses it.
        """
        self.protocol.dataReceived(ACCEPT)
        self.assertIsNone(self.successResultOf(self.session.ready))
        self.assertFalse(self.session.paused)
        self.assertFalse(self.transport.disconnecting)

    def test_sendMessages(self) -> None:
        """
        The session's images go out as open, chunk header and raw bytes,
        close and done messages.
        """
        self.protocol.dataReceived(ACCEPT)
        self.sent()
        image = self.session.openImage("snap", "a.img")
        image.write(b"hello")
        image.close()
        self.session.finish()
        sent = self.sent()
        self.assertEqual(
            sent[:4],
            [
                ProxyMessage(open=link_pb2.ImageOpen(image=1, name="a.img", snapshot_id="snap")),
                ProxyMessage(chunk=link_pb2.Chunk(image=1, length=5)),
                b"hello",
                ProxyMessage(close=link_pb2.ImageClose(image=1, size=5, crc32c=crc32c(b"hello"))),
            ],
        )
        last = sent[4]
        assert isinstance(last, ProxyMessage)
        self.assertEqual((last.done.images, last.done.bytes, len(last.done.manifest_sha256)), (1, 5, 32))

    def test_largeWriteSplit(self) -> None:
        """
        A write longer than L{MAX_CHUNK} goes out as several chunks, none
        over the limit, whose bytes put together are the write.
        """
        self.protocol.dataReceived(ACCEPT)
        self.sent()
        data = b"\1" * MAX_CHUNK + b"tail"
        self.stream.sendChunk(3, data)
        sent = self.sent()
        self.assertEqual(
            sent[0::2],
            [
                ProxyMessage(chunk=link_pb2.Chunk(image=3, length=MAX_CHUNK)),
                ProxyMessage(chunk=link_pb2.Chunk(image=3, length=4)),
            ],
        )
        self.assertEqual(sent[1::2], [data[:MAX_CHUNK], b"tail"])

    def test_emptyWrite(self) -> None:
        """
        A write of nothing sends nothing.
        """
        self.sent()
        self.stream.sendChunk(1, b"")
        self.assertEqual(self.transport.value(), b"")

    def test_doneOk(self) -> None:
        """
        The cache's acks and done_ok, even one byte at a time, complete the
        session, and the proxy closes the link.
        """
        self.feedBytewise(ACCEPT)
        self.session.openImage("", "a.img").close()
        self.session.finish()
        self.feedBytewise(ack(1) + DONE_OK)
        outcome = self.successResultOf(self.session.result)
        self.assertEqual((outcome.name, outcome.images, outcome.bytes), ("mig", 1, 0))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.session.over)

    def _failsWith(self, data: bytes, text: str) -> None:
        """
        After accept, the cache's C{data} fails the session with a reason
        holding C{text}, and the proxy closes the link.
        """
        self.protocol.dataReceived(ACCEPT)
        self.protocol.dataReceived(data)
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn(text, str(f.value))
        self.assertTrue(self.transport.disconnecting)

    def test_refuse(self) -> None:
        """
        The cache's refusal fails both of the session's Deferreds with its
        reason, and the proxy closes the link.
        """
        self.protocol.dataReceived(cacheBytes(refuse=link_pb2.Refuse(reason="busy")))
        for d in (self.session.ready, self.session.result):
            f = self.failureResultOf(d, SessionError)
            self.assertEqual(str(f.value), "cache refused the session: busy")
        self.assertTrue(self.transport.disconnecting)

    def test_imageRefused(self) -> None:
        """
        The cache refusing an image fails the session with its reason.
        """
        self._failsWith(
            cacheBytes(image_refused=link_pb2.ImageRefused(image=1, reason="checksum mismatch")),
            "cache refused an image: checksum mismatch",
        )

    def test_sessionFailed(self) -> None:
        """
        The cache failing the session fails it here with its reason.
        """
        self._failsWith(
            cacheBytes(failed=link_pb2.SessionFailed(reason="bad digest")),
            "cache failed the session: bad digest",
        )

    def test_unexpectedAck(self) -> None:
        """
        An acknowledgement of an image never closed fails the session.
        """
        self._failsWith(ack(5), "image 5")

    def test_malformed(self) -> None:
        """
        Bytes from the cache that are not a link message fail the session.
        """
        self._failsWith(b"\0\0\0\0", "cache sent malformed data")

    def test_connectionLost(self) -> None:
        """
        The link closing before the session completed does not fail it: the
        session's producers are held until another connection resumes it
        (the L{LinkDriver} gives up after a while).
        """
        self.protocol.dataReceived(ACCEPT)
        producer = FakeProducer()
        self.session.openImage("", "a.img").attachProducer(producer)
        self.protocol.connectionLost(Failure(ConnectionLost("reset")))
        self.assertNoResult(self.session.result)
        self.assertTrue(self.session.paused)
        self.assertFalse(self.stream.connected)
        self.assertEqual(producer.calls, ["resume", "pause"])

    def test_connectionLostBeforeAccept(self) -> None:
        """
        The link closing before the cache answered leaves the session
        waiting for another connection.
        """
        self.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertNoResult(self.session.ready)
        self.assertNoResult(self.session.result)

    def test_answerBeforeAccept(self) -> None:
        """
        Anything but accept, refuse or failed before the cache accepted the
        session fails it.
        """
        self.protocol.dataReceived(cacheBytes(progress=link_pb2.Progress(received=0)))
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("before accepting", str(f.value))
        self.failureResultOf(self.session.ready, SessionError)

    def test_abortClosesAndSilences(self) -> None:
        """
        Aborting sends the reason and closes the link; nothing is sent after.
        """
        self.protocol.dataReceived(ACCEPT)
        self.sent()
        self.session.abort("CRIU died")
        self.failureResultOf(self.session.result, SessionError)
        self.assertEqual(self.sent(), [ProxyMessage(abort=link_pb2.Abort(reason="CRIU died"))])
        self.assertTrue(self.transport.disconnecting)
        self.stream.sendOpen(9, "", "a.img")
        self.stream.sendChunk(9, b"data")
        self.stream.sendDone(0, 0, b"")
        self.assertEqual(self.transport.value(), b"")

    def test_backpressure(self) -> None:
        """
        The transport pausing and resuming the link pauses and resumes the
        producers of the session's images.
        """
        self.protocol.dataReceived(ACCEPT)
        producer = FakeProducer()
        self.session.openImage("", "a.img").attachProducer(producer)
        self.protocol.pauseProducing()
        self.assertTrue(self.session.paused)
        self.protocol.resumeProducing()
        self.assertFalse(self.session.paused)
        self.assertEqual(producer.calls, ["resume", "pause", "resume"])
        self.protocol.stopProducing()
        self.assertNoResult(self.session.result)


class ProxyLinkFactoryTests(SynchronousTestCase):
    """
    Tests for L{ProxyLinkFactory}.
    """

    def test_buildProtocol(self) -> None:
        """
        The factory builds a link protocol for its session.
        """
        session = ProxySession("mig")
        factory = ProxyLinkFactory(session)
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, ProxyLinkProtocol)
        self.assertIs(protocol.session, session)
        self.assertIs(protocol.stream, factory.stream)
        self.assertIs(protocol.factory, factory)

    def test_idleTimeoutPassed(self) -> None:
        """
        The factory hands its idle timeout to each protocol it builds: a
        connection whose hello the cache leaves unanswered that long is
        dropped.
        """
        reactor = MemoryReactorClock()
        factory = ProxyLinkFactory(ProxySession("mig", reactor.seconds), reactor, idleTimeout=30)
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        reactor.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_idleTimeoutWithoutFactory(self) -> None:
        """
        A protocol given an idle timeout keeps it without any factory; one
        given none never times out.
        """
        reactor = MemoryReactorClock()
        stream = ProxyLinkFactory(ProxySession("mig", reactor.seconds)).stream
        timed, untimed = StringTransport(), StringTransport()
        ProxyLinkProtocol(stream, reactor, idleTimeout=5).makeConnection(timed)
        ProxyLinkProtocol(stream, reactor).makeConnection(untimed)
        reactor.advance(5)
        self.assertTrue(timed.disconnecting)
        self.assertFalse(untimed.disconnecting)
        self.assertEqual(reactor.getDelayedCalls(), [])


class HeartbeatTests(SynchronousTestCase):
    """
    A cache that promises word every heartbeat (L{link_pb2.Accept.heartbeat})
    and then says nothing for three of them is taken for dead.
    """

    def connect(self, heartbeat: float) -> tuple[MemoryReactorClock, ProxyLinkProtocol, StringTransport]:
        """
        @return: A link the cache accepted, promising C{heartbeat}.
        """
        reactor = MemoryReactorClock()
        protocol = ProxyLinkFactory(ProxySession("mig", reactor.seconds), reactor).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(frame(CacheMessage(accept=link_pb2.Accept(received=0, heartbeat=heartbeat))))
        return reactor, protocol, transport

    def test_silenceIsDeath(self) -> None:
        """
        Three heartbeats without a word from the cache drop the link (the
        session waits for another, to resume); every message heard, a
        heartbeat's progress report among them, starts the count again.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        reactor, protocol, transport = self.connect(2.0)
        reactor.advance(5.9)
        protocol.dataReceived(frame(CacheMessage(progress=link_pb2.Progress(received=0))))
        reactor.advance(5.9)
        self.assertFalse(transport.disconnecting)
        reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertIn("no word from the cache for 6 s", "".join(formatEvent(e) for e in events))
        self.assertFalse(protocol.session.over)

    def test_noPromiseNoTimeout(self) -> None:
        """
        A cache that promises no heartbeat (an older one) may be quiet for
        any time.
        """
        reactor, protocol, transport = self.connect(0.0)
        reactor.advance(3600)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(reactor.getDelayedCalls(), [])


class CorruptingTransport(FakeTransport):
    """
    A L{FakeTransport} that flips one bit of the first occurrence of
    C{marker} in what it delivers.
    """

    marker = b"CORRUPT-ME"
    corrupted = False

    def bufferReceived(self, buf: object) -> None:
        """
        Deliver C{buf}, damaged once.
        """
        if isinstance(buf, bytes) and not self.corrupted:
            i = buf.find(self.marker)
            if i >= 0:
                self.corrupted = True
                damaged = bytearray(buf)
                damaged[i] ^= 0x01
                buf = bytes(damaged)
        super().bufferReceived(buf)


class LinkPairTests(SynchronousTestCase):
    """
    A L{ProxyLinkProtocol} talking to a L{CacheLinkProtocol} through
    L{iosim}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.slot = SessionSlot(clock=self.clock.seconds)
        self.session = ProxySession("mig", self.clock.seconds)
        self.proxyFactory = ProxyLinkFactory(self.session)

    def connect(
        self, serverTransportFactory: Optional[Callable[[CacheLinkProtocol], FakeTransport]] = None
    ) -> tuple[ProxyLinkProtocol, CacheLinkProtocol, IOPump]:
        """
        Connect a proxy link for C{self.session} to a cache link on
        C{self.slot}, and let them greet.
        """
        kwargs: dict[str, Any] = {}
        if serverTransportFactory is not None:
            kwargs["serverTransportFactory"] = serverTransportFactory
        return connectedServerAndClient(
            lambda: CacheLinkProtocol(self.slot, self.clock.seconds),
            lambda: self.proxyFactory.buildProtocol(None),
            **kwargs,
        )

    def test_wholeSession(self) -> None:
        """
        A session of several images, written interleaved, arrives whole: the
        proxy's result has the right outcome and the cache's session is
        complete with byte-identical images.
        """
        client, server, pump = self.connect()
        self.successResultOf(self.session.ready)
        big = bytes(range(256)) * (6 * 1024) + b"!"  # 1.5 MiB and a byte
        contents = {
            ("", "core-1.img"): b"core" * 100,
            ("", "pages-1.img"): big,
            ("snap2", "pages-1.img"): b"other snapshot",
            ("", "empty.img"): b"",
        }
        images = {key: self.session.openImage(*key) for key in contents}
        offsets = dict.fromkeys(contents, 0)
        step = 100_000
        while any(offsets[k] < len(c) for k, c in contents.items()):
            for key, content in contents.items():
                piece = content[offsets[key] : offsets[key] + step]
                if piece:
                    images[key].write(piece)
                    offsets[key] += len(piece)
            pump.flush()
        self.clock.advance(3)
        for image in images.values():
            image.close()
        self.session.finish()
        pump.flush()
        total = sum(len(c) for c in contents.values())
        self.assertEqual(self.successResultOf(self.session.result), SessionOutcome("mig", 4, total, 3, total))
        cached = server.state.session
        assert cached is not None
        self.assertIs(cached.state, SessionState.COMPLETE)
        self.assertEqual(cached.name, "mig")
        self.assertEqual(set(cached.images), set(contents))
        for key, content in contents.items():
            self.assertEqual(cached.images[key].data.tobytes(), content)
        # The proxy closed the link; the cache's session stays complete.
        self.assertTrue(pump.clientIO.disconnected)
        self.assertIs(cached.state, SessionState.COMPLETE)

    def test_refused(self) -> None:
        """
        A cache whose slot is busy refuses the session, and the proxy's
        result fails with the cache's reason; the busy session is untouched.
        """
        busy = self.slot.claim("other")
        client, server, pump = self.connect()
        for d in (self.session.ready, self.session.result):
            f = self.failureResultOf(d, SessionError)
            self.assertIn("cache refused the session", str(f.value))
            self.assertIn("'other' is still in progress", str(f.value))
        self.assertIs(self.slot.current, busy)
        self.assertIs(busy.state, SessionState.RECEIVING)
        self.assertTrue(pump.clientIO.disconnected)

    def test_corruptedInTransit(self) -> None:
        """
        A byte of an image damaged on the way makes the cache refuse the
        image and the proxy's result fail naming the checksum; the image is
        never served.
        """
        client, server, pump = self.connect(
            lambda p: CorruptingTransport(p, isServer=True)
        )
        good = self.session.openImage("", "good.img")
        good.write(b"fine")
        good.close()
        bad = self.session.openImage("", "bad.img")
        bad.write(b"before " + CorruptingTransport.marker + b" after")
        bad.close()
        self.session.finish()
        pump.flush()
        self.assertTrue(pump.serverIO.corrupted)
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("cache refused an image", str(f.value))
        self.assertIn("checksum mismatch", str(f.value))
        cached = server.state.session
        assert cached is not None
        self.assertIs(cached.state, SessionState.FAILED)
        self.assertIn("checksum mismatch", cached.failure or "")
        self.assertIsNone(self.successResultOf(cached.waitImage("", "bad.img")))
        self.assertIsNone(self.successResultOf(cached.waitImage("", "good.img")))

    def test_connectionLostMidSession(self) -> None:
        """
        The link breaking in the middle of an image fails the session on a
        cache link that has no factory to keep it for a resume (see
        L{tests.scenarios.test_resume} for resuming); the proxy waits for another
        connection.
        """
        client, server, pump = self.connect()
        image = self.session.openImage("", "a.img")
        image.write(b"half of it")
        pump.flush()
        restore = self.slot.attachRestore()
        waiting = restore.waitImage("", "a.img")
        for transport in (pump.clientIO, pump.serverIO):
            transport.disconnectReason = ConnectionLost("network down")
        pump.serverIO.loseConnection()
        pump.flush()
        self.assertNoResult(self.session.result)
        self.assertTrue(self.session.paused)
        cached = server.state.session
        assert cached is not None
        self.assertIs(cached.state, SessionState.FAILED)
        self.assertIn("link lost before the session completed", cached.failure or "")
        self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual(cached.images, {})

    def test_proxyAborts(self) -> None:
        """
        A session the proxy aborts fails in the cache with the proxy's
        reason.
        """
        client, server, pump = self.connect()
        self.session.openImage("", "a.img").write(b"x")
        self.session.abort("CRIU died")
        pump.flush()
        self.failureResultOf(self.session.result, SessionError)
        cached = server.state.session
        assert cached is not None
        self.assertIs(cached.state, SessionState.FAILED)
        self.assertIn("proxy aborted the session: CRIU died", cached.failure or "")
