"""
Tests for L{imgrelay.proxy.criulink}: the proxy's end of a CRIU-format
link, over a L{StringTransport}.
"""

from __future__ import annotations


from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.wire.criulink import (
    O_APPEND,
    O_WRONLY,
    PARENT,
    remoteHeader,
)
from imgrelay.core.errors import SessionError
from imgrelay.wire.link import APPEND, REPLACE
from imgrelay.proxy.session import ProxySession
from imgrelay.proxy.interfaces import ILinkSender
from imgrelay.proxy.criulink import CriuLinkSender, CriuLinkSenderFactory

from tests.wire.test_criulink import PAGES, RECORD, VECTOR, image

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


class CriuLinkSenderFactoryTests(SynchronousTestCase):
    """
    Tests for L{CriuLinkSenderFactory}.
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
