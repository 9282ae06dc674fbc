"""
Fault injection on the link: a session between a real proxy side (session,
L{LinkStream}, L{LinkDriver}) and a real cache side (L{CacheLinkFactory})
whose connections the test delivers, cuts and corrupts byte by byte, with
the clock under its control. No sleeps, no sockets: every run is the same.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Callable, Optional

from crc32c import crc32c
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IPushProducer, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.cache.listener import CacheLinkFactory
from imgrelay.core.errors import SessionError
from imgrelay.proxy.stream import MIN_WINDOW
from imgrelay.wire.link import CacheMessage, ProxyMessage, frame
from imgrelay.wire.pb import link_pb2
from imgrelay.proxy.link import ProxyLinkFactory, ProxyLinkProtocol
from imgrelay.proxy.session import OutgoingImage, ProxySession
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.proxy.packer import Compression
from imgrelay.proxy.reconnect import LinkDriver
from imgrelay.core.store import SessionState
from imgrelay.core.slot import SessionSlot

MiB = 1 << 20

#: The cache's resume timeout and the proxy's give-up time in these tests.
RESUME_TIMEOUT = 120.0
GIVE_UP = 60.0
#: Seconds between reconnection attempts in these tests.
RETRY = 0.5


class _Half:
    """
    One end's transport on a L{Wire}: what that end writes waits in
    C{out} until the test delivers it.
    """

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.out: deque[bytes] = deque()
        self.disconnecting = False
        self.producer: Optional[IPushProducer] = None

    def write(self, data: bytes) -> None:
        if not self.wire.closed and data:
            self.out.append(bytes(data))

    def writeSequence(self, seq: list[bytes]) -> None:
        for data in seq:
            self.write(data)

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.wire.close(ConnectionAborted())

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 7070)

    getHost = getPeer

    def getHandle(self) -> None:
        raise NotImplementedError("no socket")

    @property
    def pending(self) -> int:
        return sum(len(d) for d in self.out)


class Wire:
    """
    A connection between a proxy link protocol and a cache link protocol
    whose bytes move only when the test says.
    """

    def __init__(self, proxy: ProxyLinkProtocol, cache: CacheLinkProtocol) -> None:
        self.proxy = proxy
        self.cache = cache
        self.closed = False
        self.toCacheBytes = 0
        self.proxySide = _Half(self)
        self.cacheSide = _Half(self)
        cache.makeConnection(self.cacheSide)  # type: ignore[arg-type]
        proxy.makeConnection(self.proxySide)  # type: ignore[arg-type]

    def deliverToCache(self, limit: Optional[int] = None, corrupt: Optional[int] = None) -> int:
        """
        Hand the cache what the proxy wrote, whole pieces as written, up to
        C{limit} bytes (the last piece cut short).

        @param corrupt: Flip a bit of the byte at this link offset.
        @return: Bytes delivered.
        """
        delivered = 0
        out = self.proxySide.out
        while out and not self.closed and (limit is None or delivered < limit):
            data = out.popleft()
            if limit is not None and len(data) > limit - delivered:
                out.appendleft(data[limit - delivered :])
                data = data[: limit - delivered]
            if corrupt is not None and self.toCacheBytes <= corrupt < self.toCacheBytes + len(data):
                damaged = bytearray(data)
                damaged[corrupt - self.toCacheBytes] ^= 0x10
                data = bytes(damaged)
            self.toCacheBytes += len(data)
            delivered += len(data)
            self.cache.dataReceived(data)
        return delivered

    def deliverToProxy(self) -> None:
        """
        Hand the proxy everything the cache wrote.
        """
        out = self.cacheSide.out
        while out and not self.closed:
            self.proxy.dataReceived(out.popleft())

    def pump(self) -> None:
        """
        Deliver both ways until nothing moves, then carry out a close one
        end asked for once what it wrote is delivered.
        """
        while not self.closed and (self.proxySide.out or self.cacheSide.out):
            self.deliverToCache()
            self.deliverToProxy()
        if not self.closed and (self.proxySide.disconnecting or self.cacheSide.disconnecting):
            self.close(ConnectionDone())

    def close(self, reason: Exception) -> None:
        """
        The connection ends: whatever was not delivered is lost.
        """
        if self.closed:
            return
        self.closed = True
        self.proxySide.out.clear()
        self.cacheSide.out.clear()
        self.proxy.connectionLost(Failure(reason))
        self.cache.connectionLost(Failure(reason))

    def cut(self) -> None:
        """
        The network drops the connection.
        """
        self.close(ConnectionLost("cut by the test"))


@implementer(IStreamClientEndpoint)
class WireEndpoint:
    """
    An endpoint that connects the proxy to the cache factory over a new
    L{Wire}, or fails while C{down}.
    """

    def __init__(self, cacheFactory: CacheLinkFactory) -> None:
        self.cacheFactory = cacheFactory
        self.wires: list[Wire] = []
        self.down = False
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if self.down:
            return fail(ConnectionRefusedError("the cache is down"))
        addr = IPv4Address("TCP", "127.0.0.1", 7070)
        proxy = factory.buildProtocol(addr)
        cache = self.cacheFactory.buildProtocol(addr)
        assert proxy is not None
        # ClientService wraps the protocol; the wire talks to the wrapper.
        self.wires.append(Wire(proxy, cache))  # type: ignore[arg-type]
        return succeed(proxy)

    @property
    def wire(self) -> Wire:
        """
        @return: The latest connection.
        """
        return self.wires[-1]


@implementer(IPushProducer)
class Feeder:
    """
    CRIU writing one image: a push producer whose data the test hands to
    the image while the session lets it.
    """

    def __init__(self, image: OutgoingImage, content: bytes, piece: int) -> None:
        self.image = image
        self.content = content
        self.piece = piece
        self.offset = 0
        self.paused = False
        self.closed = False
        image.attachProducer(self)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass

    def step(self) -> bool:
        """
        Write the next piece, or close at the end, if not paused.

        @return: Whether anything happened.
        """
        if self.paused or self.closed:
            return False
        if self.offset < len(self.content):
            self.image.write(self.content[self.offset : self.offset + self.piece])
            self.offset += self.piece
        else:
            self.closed = True
            self.image.close()
        return True


def _cutAfterEachMessage(migration: Migration, boundaries: set[int]) -> Callable[[Wire, int], None]:
    """
    @return: What each connection of C{migration} does: carry the hello,
        then exactly one more message or one chunk's payload, then be cut
        (every other time before the cache's answers reach the proxy);
        where the cache's stream stood at each cut goes into
        C{boundaries}.
    """

    def connection(wire: Wire, n: int) -> None:
        # The hello, then the cache's accept and any resend.
        wire.deliverToCache(len(wire.proxySide.out[0]))
        wire.deliverToProxy()
        if not wire.proxySide.out:
            migration.feed()
        if wire.proxySide.out and not wire.closed:
            wire.deliverToCache(len(wire.proxySide.out[0]))
        stream = wire.cache.stream
        if stream is not None:
            boundaries.add(stream.taken)
        if n % 2:
            wire.deliverToProxy()
        wire.cut()

    return connection


def _content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class _Logs:
    """
    Log events collected while a test runs.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)


class Migration:
    """
    One session's proxy and cache sides joined by L{WireEndpoint}.
    """

    def __init__(
        self, contents: dict[tuple[str, str], bytes], window: int = MIN_WINDOW, piece: int = MiB,
        compression: Optional[Compression] = None,
    ) -> None:
        self.clock = Clock()
        self.slot = SessionSlot(clock=self.clock.seconds)
        self.cacheFactory = CacheLinkFactory(self.slot, self.clock.seconds, self.clock, resumeTimeout=RESUME_TIMEOUT)
        self.endpoint = WireEndpoint(self.cacheFactory)
        self.session = ProxySession("mig", self.clock.seconds)
        self.outcomes: list[object] = []
        self.session.addOverObserver(self.outcomes.append)
        self.proxyFactory = ProxyLinkFactory(self.session, self.clock, window, compression=compression)
        self.stream = self.proxyFactory.stream
        self.driver = LinkDriver(
            self.endpoint, self.proxyFactory, self.clock, "the test cache", GIVE_UP, lambda attempt: RETRY
        )
        self.contents = contents
        self.piece = piece
        self.feeders: list[Feeder] = []
        self.finished = False

    def start(self) -> None:
        """
        Dial, and open every image once the cache accepted.
        """
        self.driver.start()

    def openImages(self) -> None:
        """
        Open every image (the session must be accepted).
        """
        for (snapshot, name), content in self.contents.items():
            image = self.session.openImage(snapshot, name)
            self.feeders.append(Feeder(image, content, self.piece))

    def feed(self) -> bool:
        """
        Let every image that may write one piece do so; finish the session
        once every image is closed.

        @return: Whether anything was written.
        """
        if not self.feeders and self.stream.accepted:
            self.openImages()
        moved = False
        for feeder in self.feeders:
            moved = feeder.step() or moved
        if self.feeders and all(f.closed for f in self.feeders) and not self.finished:
            self.finished = True
            self.session.finish()
            moved = True
        return moved

    @property
    def cached(self):  # type: ignore[no-untyped-def]
        return self.slot.current

    def assertIntact(self, case: SynchronousTestCase) -> None:
        """
        The proxy's result and the cache's session agree with the contents,
        byte for byte.
        """
        total = sum(len(c) for c in self.contents.values())
        outcome = case.successResultOf(self.session.result)
        case.assertIsInstance(outcome, SessionOutcome)
        case.assertEqual((outcome.images, outcome.bytes), (len(self.contents), total))
        session = self.cached
        case.assertIs(session.state, SessionState.COMPLETE)
        case.assertEqual(set(session.images), set(self.contents))
        for key, content in self.contents.items():
            image = session.images[key]
            case.assertEqual(image.size, len(content))
            case.assertEqual(image.crc, crc32c(content))
            case.assertTrue(image.data.tobytes() == content, f"image {key} differs")


def _contents(big: int = 64 * MiB + 1) -> dict[tuple[str, str], bytes]:
    return {
        ("", "pages-1.img"): _content(1, big),
        ("", "core-1.img"): _content(2, 3000),
        ("", "empty.img"): b"",
        ("", "mm-1.img"): _content(3, 300_000),
        ("s2", "pages-1.img"): _content(4, 2 * MiB + 17),
    }


class ResumeTests(SynchronousTestCase):
    """
    A session survives its link being cut anywhere.
    """

    def run_(self, migration: Migration, connection: Callable[[Wire, int], None], limit: int = 5000) -> None:
        """
        Run C{migration} to its end: on each new connection, let
        C{connection(wire, n)} deliver and cut it as it likes, feeding the
        proxy between deliveries, and let the clock run for reconnections.
        """
        migration.start()
        seen = 0
        for _ in range(limit):
            if migration.session.over and (not migration.endpoint.wires or migration.endpoint.wire.closed):
                return
            if len(migration.endpoint.wires) > seen:
                seen = len(migration.endpoint.wires)
                connection(migration.endpoint.wire, seen)
            elif migration.endpoint.wires and not migration.endpoint.wire.closed:
                wire = migration.endpoint.wire
                wire.pump()
                if not migration.feed() and not wire.proxySide.out and not wire.cacheSide.out:
                    wire.pump()
            migration.clock.advance(RETRY)
        self.fail("the migration did not end")

    def feedAndDeliver(self, migration: Migration, wire: Wire, total: int) -> None:
        """
        Feed the proxy and deliver to the cache until C{total} bytes of this
        connection reached it, with the cache's answers going back.
        """
        delivered = 0
        while delivered < total and not wire.closed:
            moved = wire.deliverToCache(total - delivered)
            delivered += moved
            wire.deliverToProxy()
            if not moved and not migration.feed():
                if not wire.proxySide.out:
                    return

    def test_noFault(self) -> None:
        """
        Without faults, the harness moves the session whole over one
        connection.
        """
        migration = Migration(_contents())
        self.run_(migration, lambda wire, n: None)
        migration.assertIntact(self)
        self.assertEqual(len(migration.endpoint.wires), 1)

    def test_everyMessageBoundary(self) -> None:
        """
        Each connection carries the hello, then exactly one more message or
        one chunk's payload, then is cut (every other time before the
        cache's answers reach the proxy): the cut falls once after every
        message of the session, handshakes included, and the images arrive
        byte for byte.
        """
        migration = Migration(_contents())
        boundaries: set[int] = set()
        self.run_(migration, _cutAfterEachMessage(migration, boundaries))
        migration.assertIntact(self)
        # 64 payloads of the large image alone, each followed by a cut.
        self.assertGreater(len(migration.endpoint.wires), 150)
        self.assertGreater(len(boundaries), 150)

    def test_randomOffsets(self) -> None:
        """
        Cuts at random offsets, most inside chunks' payloads, then a final
        connection left alone: the images arrive byte for byte.
        """
        rng = random.Random(20261125)
        migration = Migration(_contents(), window=8 * MiB)
        cuts = 40

        def connection(wire: Wire, n: int) -> None:
            if n > cuts:
                return
            self.feedAndDeliver(migration, wire, rng.randrange(1, 3 * MiB))
            if rng.random() < 0.5:
                wire.deliverToProxy()
            wire.cut()

        self.run_(migration, connection)
        migration.assertIntact(self)
        self.assertEqual(len(migration.endpoint.wires), cuts + 1)

    def test_cutDuringHandshakes(self) -> None:
        """
        Cut inside the first hello, before the accept reaches the proxy,
        inside a resuming hello, and between the proxy's done and the cache's
        confirmation: the session still completes, confirmed once.
        """
        migration = Migration(_contents(big=5 * MiB))
        plan: list[Callable[[Wire], None]] = [
            lambda wire: (wire.deliverToCache(3), wire.cut()),
            lambda wire: (wire.deliverToCache(), wire.cut()),
            lambda wire: (self.feedAndDeliver(migration, wire, 2 * MiB), wire.deliverToProxy(), wire.cut()),
            lambda wire: (wire.deliverToCache(5), wire.cut()),
        ]

        def connection(wire: Wire, n: int) -> None:
            if n <= len(plan):
                plan[n - 1](wire)
                return
            if n == len(plan) + 1:
                # Everything, the done included, but the confirmation is
                # lost with the connection.
                while not migration.finished or wire.proxySide.out:
                    migration.feed()
                    wire.deliverToCache()
                    if not migration.finished:
                        wire.deliverToProxy()
                self.assertIs(migration.cached.state, SessionState.COMPLETE)
                self.assertNoResult(migration.session.result)
                wire.cut()

        self.run_(migration, connection)
        migration.assertIntact(self)
        self.assertEqual(len(migration.endpoint.wires), len(plan) + 2)

    def test_windowBoundsWhatIsHeld(self) -> None:
        """
        While the cache reports no progress, the proxy holds CRIU's pipes
        once a window is unacknowledged instead of holding more; progress
        lets them go on.
        """
        migration = Migration(_contents(big=64 * MiB), window=MIN_WINDOW)
        migration.start()
        wire = migration.endpoint.wire
        wire.pump()
        for _ in range(100):
            migration.feed()
        held = migration.stream.outbound.held
        self.assertGreaterEqual(held, MIN_WINDOW)
        # One piece per image may pass the window.
        self.assertLessEqual(held, MIN_WINDOW + len(migration.contents) * MiB + 4096)
        self.assertTrue(migration.session.paused)
        self.assertTrue(all(f.paused for f in migration.feeders if not f.closed))
        wire.deliverToCache()
        wire.deliverToProxy()
        self.assertLess(migration.stream.outbound.held, MIN_WINDOW)
        self.assertFalse(migration.session.paused)

    def test_cacheRestartsRefused(self) -> None:
        """
        A cache that no longer knows the session (it restarted) refuses the
        resume, and the proxy fails the session naming why.
        """
        migration = Migration(_contents(big=2 * MiB))

        def connection(wire: Wire, n: int) -> None:
            if n == 1:
                self.feedAndDeliver(migration, wire, MiB)
                migration.cacheFactory.resumes.streams.clear()
                wire.cut()

        self.run_(migration, connection)
        f = self.failureResultOf(migration.session.result, SessionError)
        self.assertIn("no session 'mig' to resume here", str(f.value))

    def test_wrongToken(self) -> None:
        """
        A resuming hello with another token is refused, and the session it
        named goes on waiting for its own proxy.
        """
        migration = Migration(_contents(big=2 * MiB))
        migration.start()
        wire = migration.endpoint.wire
        self.feedAndDeliver(migration, wire, MiB)
        wire.cut()
        stranger = migration.cacheFactory.buildProtocol(None)
        side = _Half(Wire.__new__(Wire))
        side.wire.closed = False
        stranger.makeConnection(side)  # type: ignore[arg-type]
        stranger.dataReceived(
            frame(ProxyMessage(hello=link_pb2.Hello(version=1, session="mig", resume=True, resume_token=b"x" * 16)))
        )
        answer = CacheMessage.FromString(side.out[0][4:])
        self.assertIn("wrong resume token", answer.refuse.reason)
        self.assertIs(migration.cached.state, SessionState.RECEIVING)
        self.assertIn("mig", migration.cacheFactory.resumes.streams)

    def test_newLinkReplacesOld(self) -> None:
        """
        A resume while the cache still holds the old connection (it has not
        noticed the break) drops the old one and goes on from what the
        cache took.
        """
        migration = Migration(_contents(big=3 * MiB))
        migration.start()
        old = migration.endpoint.wire
        self.feedAndDeliver(migration, old, MiB)
        # Only the proxy notices the break.
        old.closed = True
        old.proxy.connectionLost(Failure(ConnectionLost("proxy side timed out")))
        migration.clock.advance(RETRY)
        new = migration.endpoint.wire
        self.assertIsNot(new, old)
        new.pump()
        self.assertTrue(old.cacheSide.disconnecting or old.cache._closing)
        self.run_(migration, lambda wire, n: None)
        migration.assertIntact(self)

    def test_corruptedByteRefused(self) -> None:
        """
        One payload byte damaged in transit makes the cache refuse the image
        with a checksum error; the session fails on both sides and is not
        resumed.
        """
        migration = Migration(_contents(big=3 * MiB))

        def connection(wire: Wire, n: int) -> None:
            self.feedAndDeliver(migration, wire, 100)
            wire.deliverToCache(corrupt=2 * MiB)

        self.run_(migration, connection)
        f = self.failureResultOf(migration.session.result, SessionError)
        self.assertIn("checksum mismatch", str(f.value))
        self.assertIs(migration.cached.state, SessionState.FAILED)
        self.assertEqual(len(migration.endpoint.wires), 1)


class GivingUpTests(SynchronousTestCase):
    """
    When resuming is impossible, both sides fail the session loudly.
    """

    def test_proxyGone(self) -> None:
        """
        The proxy stops for good mid-session: after the resume timeout the
        cache fails the session, a restore waiting for an image is told it
        does not exist, and the cause is logged; the half-received image is
        never served.
        """
        logs = _Logs(self)
        migration = Migration(_contents(big=4 * MiB))
        migration.start()
        wire = migration.endpoint.wire
        ResumeTests.feedAndDeliver(None, migration, wire, 2 * MiB + 1000)  # type: ignore[arg-type]
        restore = migration.slot.attachRestore()
        waiting = restore.waitImage("", "pages-1.img")
        migration.driver.service.stopService()
        wire.cut()
        migration.clock.advance(RESUME_TIMEOUT - 1)
        self.assertNoResult(waiting)
        self.assertIs(restore.state, SessionState.RECEIVING)
        migration.clock.advance(1)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIs(restore.state, SessionState.FAILED)
        self.assertIn("did not resume the session within 120 s", restore.failure or "")
        self.assertIn("cut by the test", restore.failure or "")
        self.assertIsNone(self.successResultOf(restore.waitImage("", "core-1.img")))
        self.assertIn("did not resume the session within 120 s", logs.text())
        self.assertNotIn("mig", migration.cacheFactory.resumes.streams)
        # The proxy side, left alone, gave up too.
        self.failureResultOf(migration.session.result, SessionError)

    def test_cacheUnreachable(self) -> None:
        """
        The proxy gives the session up after the give-up time without an
        accepted link, naming the last error, and stops dialling.
        """
        logs = _Logs(self)
        migration = Migration(_contents(big=2 * MiB))
        migration.start()
        wire = migration.endpoint.wire
        self.assertTrue(ResumeTests.feedAndDeliver(None, migration, wire, MiB) is None)  # type: ignore[arg-type]
        migration.endpoint.down = True
        wire.cut()
        for _ in range(int(GIVE_UP / RETRY) - 1):
            migration.clock.advance(RETRY)
        self.assertNoResult(migration.session.result)
        attempts = migration.endpoint.attempts
        self.assertGreater(attempts, 100)
        migration.clock.advance(RETRY)
        f = self.failureResultOf(migration.session.result, SessionError)
        self.assertIn("no link to the cache at the test cache for 60 s", str(f.value))
        self.assertIn("the cache is down", str(f.value))
        self.assertIn("cannot reach the cache", logs.text())
        self.assertFalse(migration.driver.service.running)
        migration.clock.advance(10 * RETRY)
        self.assertEqual(migration.endpoint.attempts, attempts)

    def test_reconnectResetsGiveUp(self) -> None:
        """
        The give-up time counts from the last accepted link: an outage just
        under it, then another, do not fail the session.
        """
        migration = Migration(_contents(big=2 * MiB))
        migration.start()
        for _ in range(2):
            wire = migration.endpoint.wire
            wire.pump()
            migration.endpoint.down = True
            wire.cut()
            for _ in range(int(GIVE_UP / RETRY) - 2):
                migration.clock.advance(RETRY)
            migration.endpoint.down = False
            migration.clock.advance(RETRY)
            migration.endpoint.wire.pump()
            self.assertTrue(migration.stream.connected)
        self.assertNoResult(migration.session.result)
        migration.session.abort("test over")
        self.failureResultOf(migration.session.result, SessionError)


class HandshakeTimeoutTests(SynchronousTestCase):
    """
    A connection that never opens its exchange is dropped.
    """

    def test_noHello(self) -> None:
        """
        A link that says nothing is refused after the hello timeout, naming
        the option; one that said hello in time is kept.
        """
        reactor = MemoryReactorClock()
        factory = CacheLinkFactory(
            SessionSlot(), reactor.seconds, reactor, resumeTimeout=RESUME_TIMEOUT, idleTimeout=30
        )
        silent = factory.buildProtocol(None)
        silentTransport = StringTransport()
        silent.makeConnection(silentTransport)
        talker = factory.buildProtocol(None)
        talkerTransport = StringTransport()
        talker.makeConnection(talkerTransport)
        talker.dataReceived(frame(ProxyMessage(hello=link_pb2.Hello(version=1, session="s", resume_token=b"t" * 16))))
        reactor.advance(29)
        self.assertFalse(silentTransport.disconnecting)
        reactor.advance(1)
        self.assertTrue(silentTransport.disconnecting)
        answer = CacheMessage.FromString(silentTransport.value()[4:])
        self.assertEqual(answer.refuse.reason, "no hello within 30 s (--idle-timeout)")
        self.assertFalse(talkerTransport.disconnecting)
        for p in (silent, talker):
            p.connectionLost(Failure(ConnectionDone()))
        # No hello timer is left; the talker's session waits for a resume.
        self.assertEqual([c.getTime() for c in reactor.getDelayedCalls()], [30 + RESUME_TIMEOUT])

    def test_noAccept(self) -> None:
        """
        A cache that does not answer the hello in time gets its connection
        dropped; the session then waits for another one.
        """
        reactor = MemoryReactorClock()
        session = ProxySession("mig", reactor.seconds)
        factory = ProxyLinkFactory(session, reactor, idleTimeout=30)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        reactor.advance(30)
        self.assertTrue(transport.disconnecting or getattr(transport, "aborted", False))
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertNoResult(session.result)
        # An answer in time cancels the timer.
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(frame(CacheMessage(accept=link_pb2.Accept())))
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertFalse(transport.disconnecting)


class LostBeforeHelloTests(SynchronousTestCase):
    """
    A link lost before its hello leaves a line in the cache's log.
    """

    def test_logged(self) -> None:
        """
        The peer and the reason (a TLS handshake refused, say) are logged.
        """
        logs = _Logs(self)
        reactor = MemoryReactorClock()
        protocol = CacheLinkFactory(SessionSlot(), reactor.seconds, reactor).buildProtocol(None)
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4242)))
        protocol.connectionLost(Failure(ConnectionLost("certificate verify failed")))
        self.assertIn("link from 10.1.2.3:4242 closed before its hello:", logs.text())
        self.assertIn("certificate verify failed", logs.text())


class ShutdownTests(SynchronousTestCase):
    """
    A cache that stops fails the sessions waiting for a resume.
    """

    def test_abortAll(self) -> None:
        """
        A session whose link broke fails at once when the cache stops, naming
        why, and its resume timer is gone.
        """
        migration = Migration(_contents(big=2 * MiB))
        migration.start()
        wire = migration.endpoint.wire
        ResumeTests.feedAndDeliver(None, migration, wire, MiB)  # type: ignore[arg-type]
        migration.driver.service.stopService()
        wire.cut()
        self.assertIs(migration.cached.state, SessionState.RECEIVING)
        migration.cacheFactory.abortAll()
        self.assertIs(migration.cached.state, SessionState.FAILED)
        self.assertEqual(migration.cached.failure, "the cache is shutting down")
        self.assertEqual(migration.cacheFactory.resumes.streams, {})
        migration.session.abort("test over")
        self.failureResultOf(migration.session.result, SessionError)


class WhenClosedTests(SynchronousTestCase):
    """
    L{LinkDriver.whenClosed} and L{LinkDriver.abort}: what a stopping proxy
    waits for, and what it does when waiting is over.
    """

    def accepted(self) -> tuple[Migration, Wire]:
        migration = Migration(_contents(big=MiB))
        migration.start()
        wire = migration.endpoint.wire
        wire.pump()
        self.assertTrue(migration.stream.connected)
        return migration, wire

    def test_waitsForTheLinkToClose(self) -> None:
        """
        A session that is over with its link still closing is not closed
        yet; once the link closed, it is.
        """
        migration, wire = self.accepted()
        closed = migration.driver.whenClosed()
        migration.session.abort("test over")
        self.failureResultOf(migration.session.result, SessionError)
        self.assertTrue(wire.proxySide.disconnecting)
        self.assertNoResult(closed)
        wire.pump()
        self.assertTrue(wire.closed)
        self.successResultOf(closed)
        self.successResultOf(migration.driver.whenClosed())

    def test_abort(self) -> None:
        """
        L{LinkDriver.abort} drops a link that is still closing.
        """
        migration, wire = self.accepted()
        closed = migration.driver.whenClosed()
        migration.session.abort("test over")
        self.failureResultOf(migration.session.result, SessionError)
        self.assertNoResult(closed)
        migration.driver.abort()
        self.assertTrue(wire.closed)
        self.successResultOf(closed)

    def test_cacheUnreachable(self) -> None:
        """
        A session given up for want of a link is closed as soon as it is
        over: there is no link to wait for.
        """
        migration = Migration(_contents(big=MiB))
        migration.endpoint.down = True
        migration.start()
        closed = migration.driver.whenClosed()
        migration.clock.advance(GIVE_UP - RETRY)
        self.assertNoResult(closed)
        migration.clock.advance(2 * RETRY)
        self.failureResultOf(migration.session.result, SessionError)
        self.failureResultOf(migration.session.ready, SessionError)
        self.successResultOf(closed)


def _heapish(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    words = [b"obj-%d:%d;" % (rng.randrange(300), rng.randrange(9)) for _ in range(400)]
    out = bytearray()
    while len(out) < size:
        out += words[rng.randrange(len(words))]
    return bytes(out[:size])


def _compressible() -> dict[tuple[str, str], bytes]:
    return {
        ("", "pages-1.img"): _heapish(1, 24 * MiB + 5),
        ("", "core-1.img"): _heapish(2, 3000),
        ("", "random.img"): _content(3, 2 * MiB),
        ("", "empty.img"): b"",
    }


class CompressedResumeTests(SynchronousTestCase):
    """
    Compressed chunks survive cuts anywhere too: a cut inside a compressed
    chunk's payload resumes inside it, and the images arrive byte for byte,
    verified over their uncompressed bytes.
    """

    def migration(self, mode: str = "zstd", window: int = MIN_WINDOW) -> Migration:
        return Migration(_compressible(), window, compression=Compression(mode, maybeDeferred))

    def test_noFault(self) -> None:
        """
        Without faults, the session goes compressed: far fewer bytes on the
        link than in the images.
        """
        migration = self.migration()
        ResumeTests.run_(self, migration, lambda wire, n: None)  # type: ignore[arg-type]
        migration.assertIntact(self)
        total = sum(len(c) for c in _compressible().values())
        self.assertLess(migration.session.bytesOnLink, total // 3)

    def test_everyMessageBoundary(self) -> None:
        """
        A cut after every message of the session.
        """
        migration = self.migration("lz4")
        boundaries: set[int] = set()
        ResumeTests.run_(self, migration, _cutAfterEachMessage(migration, boundaries))  # type: ignore[arg-type]
        migration.assertIntact(self)
        self.assertGreater(len(boundaries), 40)

    def test_randomOffsets(self) -> None:
        """
        Cuts at random offsets, inside compressed payloads most of them.
        """
        rng = random.Random(20261205)
        migration = self.migration(window=8 * MiB)

        def connection(wire: Wire, n: int) -> None:
            if n > 30:
                return
            ResumeTests.feedAndDeliver(self, migration, wire, rng.randrange(1, 400_000))  # type: ignore[arg-type]
            if rng.random() < 0.5:
                wire.deliverToProxy()
            wire.cut()

        ResumeTests.run_(self, migration, connection)  # type: ignore[arg-type]
        migration.assertIntact(self)
        self.assertEqual(len(migration.endpoint.wires), 31)
