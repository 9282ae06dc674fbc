"""
Tests for L{imgrelay.local.criulink}: CRIU's own proxy-to-cache format, the
sender over a L{StringTransport}, the receiver fed both all at once and one
byte at a time, and the two connected through L{iosim}.
"""

from __future__ import annotations

from typing import Callable, Optional

from crc32c import crc32c
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.local.criulink import (
    MAX_SNAPSHOT_LIST,
    O_APPEND,
    O_WRONLY,
    PARENT,
    CriuLinkReceiver,
    CriuLinkReceiverFactory,
    CriuLinkSender,
    CriuLinkSenderFactory,
    parseSnapshotList,
    remoteHeader,
)
from imgrelay.wire.criu import frame
from imgrelay.core.errors import SessionError
from imgrelay.wire.framing import FramingError
from imgrelay.wire.link import APPEND, REPLACE
from imgrelay.wire.pb import criu_pb2
from imgrelay.proxy.session import ILinkSender, ProxySession
from imgrelay.core.store import Session, SessionSlot, SessionState

#: The spec's vector: remote header pages-1.img /mig/d1 1 118784.
VECTOR = bytes.fromhex(
    "1c 00 00 00 0a 0b 70 61 67 65 73 2d 31 2e 69 6d 67 12 07 2f 6d 69 67 2f 64 31 18 01 20 80 a0 07"
)

#: The spec's vector: snapshot id record "/mig/d1".
RECORD = bytes.fromhex("09 00 00 00 0a 07 2f 6d 69 67 2f 64 31")

#: 118784 bytes of content, not all alike.
PAGES = bytes(range(256)) * 464


def image(snapshotId: str, name: str, content: bytes, mode: int = O_WRONLY) -> bytes:
    """
    @return: One image as CRIU's format sends it: header, then content.
    """
    return remoteHeader(snapshotId, name, mode, len(content)) + content


def snapshots(*ids: str) -> bytes:
    """
    @return: An append to C{parent} holding a record for each of C{ids}.
    """
    return image("", PARENT, b"".join(frame(criu_pb2.SnapshotIdRecord(snapshot_id=i)) for i in ids), O_APPEND)


class RecordingTransport(StringTransport):
    """
    A L{StringTransport} that keeps each sequence given to C{writeSequence}
    and records an abort in C{aborted}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.sequences: list[list[bytes]] = []

    def writeSequence(self, data: list[bytes]) -> None:
        """
        Record C{data}, then write it.
        """
        self.sequences.append(list(data))
        super().writeSequence(data)

    def abortConnection(self) -> None:
        """
        Record the abort, then close.
        """
        self.aborted = True
        super().abortConnection()


class CriuLinkSenderTests(SynchronousTestCase):
    """
    Tests for L{CriuLinkSender} over a L{StringTransport}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.session = ProxySession("mig", self.clock.seconds)
        self.protocol = CriuLinkSender(self.session)
        self.transport = RecordingTransport()
        self.protocol.makeConnection(self.transport)

    def sent(self) -> bytes:
        """
        @return: What the sender wrote since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data

    def test_interfaces(self) -> None:
        """
        L{CriuLinkSender} provides L{ILinkSender} and L{IPushProducer}.
        """
        self.assertTrue(verifyObject(ILinkSender, self.protocol))
        self.assertTrue(verifyObject(IPushProducer, self.protocol))

    def test_acceptedAtOnce(self) -> None:
        """
        With no handshake in this format, the session is accepted on
        connection, unpaused, and the sender is the transport's streaming
        producer; nothing is written.
        """
        self.assertIsNone(self.successResultOf(self.session.ready))
        self.assertFalse(self.session.paused)
        self.assertIs(self.transport.producer, self.protocol)
        self.assertTrue(self.transport.streaming)
        self.assertEqual(self.sent(), b"")

    def test_vector(self) -> None:
        """
        An image goes out only once closed, as the spec's remote header
        vector byte for byte, then its content.
        """
        out = self.session.openImage("/mig/d1", "pages-1.img")
        for start in range(0, len(PAGES), 50000):
            out.write(PAGES[start : start + 50000])
        self.assertEqual(self.sent(), b"")
        out.close()
        self.assertEqual(self.sent(), VECTOR + PAGES)

    def test_piecesKept(self) -> None:
        """
        The image's pieces are written as the very objects received, behind
        the header, in one C{writeSequence}.
        """
        pieces = [b"a" * 10, b"b" * 20]
        out = self.session.openImage("s", "x.img")
        for piece in pieces:
            out.write(piece)
        out.close()
        [sequence] = self.transport.sequences
        self.assertEqual(sequence[0], remoteHeader("s", "x.img", O_WRONLY, 30))
        self.assertEqual(len(sequence), 3)
        for sent, piece in zip(sequence[1:], pieces):
            self.assertIs(sent, piece)

    def test_emptyImage(self) -> None:
        """
        An empty image goes out as a header with size 0 and nothing else.
        """
        self.session.openImage("s", "empty.img").close()
        self.assertEqual(self.sent(), remoteHeader("s", "empty.img", O_WRONLY, 0))

    def test_interleaved(self) -> None:
        """
        Images written interleaved go out whole, each in the order it closed.
        """
        a = self.session.openImage("s", "a.img")
        b = self.session.openImage("s", "b.img")
        a.write(b"aa")
        b.write(b"bbb")
        a.write(b"AA")
        b.close()
        a.close()
        self.assertEqual(self.sent(), image("s", "b.img", b"bbb") + image("s", "a.img", b"aaAA"))

    def test_replaceAndAppend(self) -> None:
        """
        A replace is a write (open mode 1); an append has open mode 1024 and
        announces only the bytes it adds.
        """
        for mode, content in ((REPLACE, b"first"), (REPLACE, b"second"), (APPEND, b"+more")):
            out = self.session.openImage("s", "x.img", mode)
            out.write(content)
            out.close()
        self.assertEqual(
            self.sent(),
            image("s", "x.img", b"first") + image("s", "x.img", b"second") + image("s", "x.img", b"+more", O_APPEND),
        )

    def test_snapshot(self) -> None:
        """
        A snapshot push is an append to C{parent} of the empty snapshot id
        whose content is one framed snapshot id record, as in the spec.
        """
        self.session.pushSnapshot("/mig/d1")
        self.assertEqual(self.sent(), remoteHeader("", PARENT, O_APPEND, len(RECORD)) + RECORD)

    def test_parentImageRefused(self) -> None:
        """
        An image that would be taken for the snapshot list fails the session
        and resets the connection.
        """
        self.session.openImage("", PARENT)
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("snapshot list", str(f.value))
        self.assertTrue(self.transport.aborted)

    def test_done(self) -> None:
        """
        Once finished, the sender stops producing and closes; the session
        is confirmed only when the close completed cleanly.
        """
        out = self.session.openImage("s", "a.img")
        out.write(b"data")
        out.close()
        self.session.finish()
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.aborted)
        self.assertIsNone(self.transport.producer)
        self.assertNoResult(self.session.result)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        outcome = self.successResultOf(self.session.result)
        self.assertEqual((outcome.name, outcome.images, outcome.bytes), ("mig", 1, 4))

    def test_lostWhileFlushing(self) -> None:
        """
        The connection breaking after the final close was asked for, before
        it completed, fails the session.
        """
        self.session.finish()
        self.protocol.connectionLost(Failure(ConnectionLost("reset")))
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("link to the cache lost", str(f.value))

    def test_lostBeforeDone(self) -> None:
        """
        The cache closing the connection, even cleanly, before the session
        finished fails it; held images are dropped.
        """
        self.session.openImage("s", "a.img").write(b"held")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("link to the cache lost", str(f.value))

    def test_abort(self) -> None:
        """
        Aborting resets the connection (a clean close would read as "done")
        and nothing is written after.
        """
        self.session.openImage("s", "a.img").write(b"held")
        self.session.abort("CRIU died")
        self.failureResultOf(self.session.result, SessionError)
        self.assertTrue(self.transport.aborted)
        self.protocol.sendOpen(9, "s", "b.img", REPLACE)
        self.protocol.sendChunk(9, b"x")
        self.protocol.sendClose(9, 1, 0)
        self.protocol.sendSnapshot("s")
        self.protocol.sendDone(0, 0, b"")
        self.assertEqual(self.sent(), b"")

    def test_dataFromCache(self) -> None:
        """
        Bytes from the cache, which this format never has, fail the session
        and reset the connection.
        """
        self.protocol.dataReceived(b"\x02\x00\x00\x00\x08\x00")
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("one-way", str(f.value))
        self.assertTrue(self.transport.aborted)

    def test_sessionOverBeforeConnect(self) -> None:
        """
        A session that failed before its link connected is not accepted:
        the connection is reset.
        """
        session = ProxySession("late")
        session.abort("CRIU died")
        transport = RecordingTransport()
        CriuLinkSender(session).makeConnection(transport)
        self.assertTrue(transport.aborted)
        self.assertIsNone(transport.producer)
        self.failureResultOf(session.ready, SessionError)
        self.failureResultOf(session.result, SessionError)

    def test_backpressure(self) -> None:
        """
        The transport pausing and resuming the sender pauses and resumes the
        session's producers.
        """
        self.protocol.pauseProducing()
        self.assertTrue(self.session.paused)
        self.protocol.resumeProducing()
        self.assertFalse(self.session.paused)
        self.protocol.stopProducing()
        self.assertNoResult(self.session.result)


class CriuLinkReceiverTests(SynchronousTestCase):
    """
    Tests for L{CriuLinkReceiver} over a L{StringTransport}; every stream is
    fed both all at once and one byte at a time.
    """

    def connect(self, slot: Optional[SessionSlot] = None) -> tuple[CriuLinkReceiver, StringTransport]:
        """
        @return: A receiver on a fresh (or the given) slot, connected.
        """
        protocol = CriuLinkReceiver(slot if slot is not None else SessionSlot())
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def receive(self, data: bytes, bytewise: bool, end: Optional[Failure] = None) -> tuple[Session, StringTransport]:
        """
        Feed C{data} to a new receiver, then end the connection with C{end}
        (a clean close by default).

        @return: The receiver's session and transport.
        """
        protocol, transport = self.connect()
        if bytewise:
            for i in range(len(data)):
                protocol.dataReceived(data[i : i + 1])
        else:
            protocol.dataReceived(data)
        protocol.connectionLost(end if end is not None else Failure(ConnectionDone()))
        assert protocol.session is not None
        return protocol.session, transport

    def both(self, check: Callable[[bool], None]) -> None:
        """
        Run C{check} fed all at once, then one byte at a time.
        """
        for bytewise in (False, True):
            check(bytewise)

    def contents(self, session: Session) -> dict[tuple[str, str], bytes]:
        """
        @return: The session's images' content by key.
        """
        return {key: i.data.tobytes() for key, i in session.images.items()}

    def test_vector(self) -> None:
        """
        The spec's remote header vector and its 118784 bytes arrive as one
        image, stored with its CRC-32C; the clean close completes the
        session, named after the peer.
        """

        def check(bytewise: bool) -> None:
            session, _ = self.receive(VECTOR + PAGES, bytewise)
            self.assertEqual(session.state, SessionState.COMPLETE)
            self.assertEqual(session.name, "criu-link:192.168.1.1:54321")
            stored = session.images[("/mig/d1", "pages-1.img")]
            self.assertEqual(stored.data.tobytes(), PAGES)
            self.assertEqual(stored.crc, crc32c(PAGES))

        self.both(check)

    def test_severalImages(self) -> None:
        """
        Several images in a row arrive intact, across snapshots.
        """

        def check(bytewise: bool) -> None:
            data = image("s1", "a.img", b"alpha") + image("s1", "b.img", b"beta") + image("s2", "a.img", b"gamma")
            session, _ = self.receive(data, bytewise)
            self.assertEqual(
                self.contents(session),
                {("s1", "a.img"): b"alpha", ("s1", "b.img"): b"beta", ("s2", "a.img"): b"gamma"},
            )
            self.assertEqual(session.state, SessionState.COMPLETE)

        self.both(check)

    def test_emptyImage(self) -> None:
        """
        An image of size 0 is complete at its header: the image after it
        arrives intact, not swallowed into it.
        """

        def check(bytewise: bool) -> None:
            session, _ = self.receive(image("s", "empty.img", b"") + image("s", "next.img", b"next"), bytewise)
            self.assertEqual(self.contents(session), {("s", "empty.img"): b"", ("s", "next.img"): b"next"})
            self.assertEqual(session.state, SessionState.COMPLETE)

        self.both(check)

    def test_replaceAndAppend(self) -> None:
        """
        A second write of a name replaces it, an append adds to it with a
        CRC-32C over the whole, and the image after them is intact.
        """

        def check(bytewise: bool) -> None:
            data = (
                image("s", "x.img", b"first")
                + image("s", "x.img", b"second")
                + image("s", "x.img", b"+more", O_APPEND)
                + image("s", "x.img", b"+last", O_APPEND)
                + image("s", "y.img", b"after")
            )
            session, _ = self.receive(data, bytewise)
            self.assertEqual(self.contents(session), {("s", "x.img"): b"second+more+last", ("s", "y.img"): b"after"})
            self.assertEqual(session.images[("s", "x.img")].crc, crc32c(b"second+more+last"))

        self.both(check)

    def test_appendToNothing(self) -> None:
        """
        An append to an image not held starts it.
        """
        session, _ = self.receive(image("s", "x.img", b"new", O_APPEND), False)
        self.assertEqual(self.contents(session), {("s", "x.img"): b"new"})

    def test_snapshotList(self) -> None:
        """
        Snapshot ids appended to C{parent}, pushed twice (the second push
        holding two records), are read back in order once the session is
        complete; C{parent} is not stored as an image.
        """

        def check(bytewise: bool) -> None:
            data = snapshots("/mig/d1") + image("/mig/d1", "a.img", b"a") + snapshots("/mig/d2", "/mig/d3")
            session, _ = self.receive(data, bytewise)
            self.assertEqual(self.successResultOf(session.waitSnapshots()), ["/mig/d1", "/mig/d2", "/mig/d3"])
            self.assertEqual(list(session.images), [("/mig/d1", "a.img")])

        self.both(check)

    def test_snapshotVector(self) -> None:
        """
        The spec's snapshot id record vector parses to its id.
        """
        self.assertEqual(parseSnapshotList(RECORD), ["/mig/d1"])
        self.assertRaises(FramingError, parseSnapshotList, RECORD[:-1])

    def test_badSnapshotList(self) -> None:
        """
        A C{parent} content that is not whole framed records fails the
        session.
        """
        session, transport = self.receive(image("", PARENT, RECORD[:-1], O_APPEND), False)
        self.assertEqual(session.state, SessionState.FAILED)
        self.assertTrue(transport.disconnecting)

    def test_snapshotListTooLarge(self) -> None:
        """
        A C{parent} announcing more than L{MAX_SNAPSHOT_LIST} bytes fails the
        session at its header, before any of it is held.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(remoteHeader("", PARENT, O_APPEND, MAX_SNAPSHOT_LIST + 1))
        assert protocol.session is not None
        self.assertEqual(protocol.session.state, SessionState.FAILED)
        self.assertTrue(transport.disconnecting)

    def test_arriving(self) -> None:
        """
        A restore asking for an image waits until the link ended: CRIU's
        format cannot say whether a later version of it follows.
        """
        protocol, _ = self.connect()
        session = protocol.session
        assert session is not None
        data = image("s", "a.img", b"content")
        protocol.dataReceived(data[:-3])
        waiting = session.waitImage("s", "a.img")
        self.assertNoResult(waiting)
        protocol.dataReceived(data[-3:])
        self.assertNoResult(waiting)
        protocol.connectionLost(Failure(ConnectionDone()))
        got = self.successResultOf(waiting)
        assert got is not None
        self.assertEqual(got.data.tobytes(), b"content")

    def test_truncatedPayload(self) -> None:
        """
        A clean close in the middle of an image fails the session, naming
        the image and the missing bytes; the half image is never stored and
        a restore waiting for it is told it does not exist.
        """

        def check(bytewise: bool) -> None:
            protocol, _ = self.connect()
            session = protocol.session
            assert session is not None
            data = image("s", "a.img", b"whole") + image("s", "b.img", b"0123456789")[:-6]
            for piece in ([data[i : i + 1] for i in range(len(data))] if bytewise else [data]):
                protocol.dataReceived(piece)
            waiting = session.waitImage("s", "b.img")
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(session.state, SessionState.FAILED)
            assert session.failure is not None
            self.assertIn("'b.img'", session.failure)
            self.assertIn("6 of its 10 bytes missing", session.failure)
            self.assertEqual(session.images, {})
            self.assertIsNone(self.successResultOf(waiting))

        self.both(check)

    def test_truncatedHeader(self) -> None:
        """
        A clean close in the middle of a header fails the session.
        """

        def check(bytewise: bool) -> None:
            session, _ = self.receive(image("s", "a.img", b"a") + VECTOR[:10], bytewise)
            self.assertEqual(session.state, SessionState.FAILED)
            assert session.failure is not None
            self.assertIn("in the middle of a remote image header", session.failure)

        self.both(check)

    def test_brokenAtBoundary(self) -> None:
        """
        A connection that breaks, rather than closes, even between images
        fails the session.
        """
        session, _ = self.receive(image("s", "a.img", b"a"), False, Failure(ConnectionLost("reset")))
        self.assertEqual(session.state, SessionState.FAILED)

    def test_badName(self) -> None:
        """
        A hostile image name fails the session and closes the link; what
        follows is ignored.
        """

        def check(bytewise: bool) -> None:
            session, transport = self.receive(image("s", "../x.img", b"evil") + image("s", "b.img", b"b"), bytewise)
            self.assertEqual(session.state, SessionState.FAILED)
            assert session.failure is not None
            self.assertIn("holds a '/'", session.failure)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(session.images, {})

        self.both(check)

    def test_readMode(self) -> None:
        """
        A header whose open mode is a read (0) fails the session.
        """
        session, _ = self.receive(image("s", "a.img", b"a", 0), False)
        self.assertEqual(session.state, SessionState.FAILED)

    def test_malformedHeader(self) -> None:
        """
        A header that is not a remote image header fails the session.
        """
        session, transport = self.receive(b"\x02\x00\x00\x00\xff\xff", False)
        self.assertEqual(session.state, SessionState.FAILED)
        self.assertTrue(transport.disconnecting)

    def test_claimRefused(self) -> None:
        """
        A second link while a session is in progress is closed and leaves
        the first alone.
        """
        slot = SessionSlot()
        first, _ = self.connect(slot)
        second, transport = self.connect(slot)
        self.assertIsNone(second.session)
        self.assertTrue(transport.disconnecting)
        second.connectionLost(Failure(ConnectionDone()))
        assert first.session is not None
        self.assertEqual(first.session.state, SessionState.RECEIVING)

    def test_logsCompletion(self) -> None:
        """
        Completion logs the images and bytes, and that nothing was verified.
        """
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        self.receive(image("s", "a.img", b"abc") + image("s", "b.img", b"de"), False)
        infos = [formatEvent(e) for e in observer if e["log_level"] == LogLevel.info]
        self.assertIn(
            "session criu-link:192.168.1.1:54321: CRIU-format link closed, 2 images, 5 bytes "
            "(unverified: CRIU's format has no checksums)",
            infos,
        )


class FactoryTests(SynchronousTestCase):
    """
    Tests for L{CriuLinkSenderFactory} and L{CriuLinkReceiverFactory}.
    """

    def test_sender(self) -> None:
        """
        The sender factory builds a sender for its session.
        """
        session = ProxySession("mig")
        factory = CriuLinkSenderFactory(session)
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, CriuLinkSender)
        self.assertIs(protocol.session, session)
        self.assertIs(protocol.factory, factory)

    def test_receiver(self) -> None:
        """
        The receiver factory builds a receiver on its slot.
        """
        slot = SessionSlot()
        factory = CriuLinkReceiverFactory(slot)
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, CriuLinkReceiver)
        self.assertIs(protocol.factory, factory)
        protocol.makeConnection(StringTransport())
        self.assertIs(protocol.session, slot.current)

    def test_abortAll(self) -> None:
        """
        C{abortAll} resets every link the receiver factory built; the
        session fails, and a link that ended is forgotten.
        """
        slot = SessionSlot()
        factory = CriuLinkReceiverFactory(slot)
        protocol = factory.buildProtocol(None)
        transport = RecordingTransport()
        protocol.makeConnection(transport)
        factory.abortAll()
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionLost("aborted")))
        self.assertEqual(factory.links, set())
        self.assertEqual(slot.current.state, SessionState.FAILED)


class CriuLinkPairTests(SynchronousTestCase):
    """
    A L{CriuLinkSender} talking to a L{CriuLinkReceiver} through L{iosim}.
    """

    def test_wholeSession(self) -> None:
        """
        A L{ProxySession} with interleaved, empty, replaced and appended
        images and two snapshot pushes completes on both sides, and the
        cache holds byte-identical images and the snapshot list.
        """
        clock = Clock()
        slot = SessionSlot(clock=clock.seconds)
        session = ProxySession("mig", clock.seconds)
        peer = IPv4Address("TCP", "10.0.0.1", 4242)
        sender, receiver, pump = connectedServerAndClient(
            lambda: CriuLinkReceiver(slot),
            lambda: CriuLinkSender(session),
            serverTransportFactory=lambda p: FakeTransport(p, True, peerAddress=peer),
        )
        session.pushSnapshot("/mig/d1")
        pages = session.openImage("/mig/d1", "pages-1.img")
        core = session.openImage("/mig/d1", "core-1.img")
        for start in range(0, len(PAGES), 40000):
            pages.write(PAGES[start : start + 40000])
            pump.pump()
        core.write(b"core")
        core.close()
        pages.close()
        session.openImage("/mig/d1", "empty.img").close()
        pump.flush()
        session.pushSnapshot("/mig/d2")
        for mode, content in ((REPLACE, b"v1"), (REPLACE, b"v2"), (APPEND, b"+3")):
            out = session.openImage("/mig/d2", "inventory.img", mode)
            out.write(content)
            out.close()
        session.finish()
        pump.flush()
        outcome = self.successResultOf(session.result)
        self.assertEqual((outcome.images, outcome.bytes), (4, len(PAGES) + 4 + 0 + 4))
        cache = slot.current
        self.assertEqual(cache.state, SessionState.COMPLETE)
        self.assertEqual(cache.name, "criu-link:10.0.0.1:4242")
        self.assertEqual(
            {key: i.data.tobytes() for key, i in cache.images.items()},
            {
                ("/mig/d1", "pages-1.img"): PAGES,
                ("/mig/d1", "core-1.img"): b"core",
                ("/mig/d1", "empty.img"): b"",
                ("/mig/d2", "inventory.img"): b"v2+3",
            },
        )
        self.assertEqual(self.successResultOf(cache.waitSnapshots()), ["/mig/d1", "/mig/d2"])
        self.assertTrue(sender.transport.disconnected)  # type: ignore[union-attr]
        self.assertIs(receiver.session, cache)
