"""
Tests for L{imgrelay.cache.criulink}: the cache's end of a CRIU-format
link, fed both all at once and one byte at a time.
"""

from __future__ import annotations

from typing import Callable, Optional

from crc32c import crc32c
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.wire.criulink import (
    MAX_SNAPSHOT_LIST,
    O_APPEND,
    PARENT,
    remoteHeader,
)
from imgrelay.core.store import Session, SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.cache.criulink import CriuLinkReceiver, CriuLinkReceiverFactory

from tests.proxy.test_criulink import RecordingTransport
from tests.wire.test_criulink import PAGES, RECORD, VECTOR, image, snapshots

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


class CriuLinkReceiverFactoryTests(SynchronousTestCase):
    """
    Tests for L{CriuLinkReceiverFactory}.
    """

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


class LinkListenerTests(SynchronousTestCase):
    """
    Both link factories provide what the cache asks of them.
    """

    def test_interface(self) -> None:
        """
        L{CriuLinkReceiverFactory} and L{CacheLinkFactory} provide
        L{ILinkListener}.
        """
        from imgrelay.cache.interfaces import ILinkListener
        from imgrelay.cache.listener import CacheLinkFactory

        verifyObject(ILinkListener, CriuLinkReceiverFactory(SessionSlot()))
        verifyObject(ILinkListener, CacheLinkFactory(SessionSlot()))

    def test_whenIdle(self) -> None:
        """
        C{whenIdle} fires at once with no link open, else once the last
        link closed.
        """
        factory = CriuLinkReceiverFactory(SessionSlot())
        self.successResultOf(factory.whenIdle())
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        idle = factory.whenIdle()
        self.assertNoResult(idle)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(idle)
