"""
Tests for L{imgrelay.transport.senders}.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgrelay.transport.senders import ISender, SocketSender, TransportSender


@implementer(IPushProducer)
class RecordingProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def readExactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            break
        data += more
    return bytes(data)


class SocketSenderTests(TestCase):
    """
    L{SocketSender} gathers pieces onto a real socket, in order, with
    backpressure.
    """

    def setUp(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.producer = RecordingProducer()
        self.errors: list[Exception] = []
        self.sender = SocketSender(
            os.dup(self.ours.fileno()), reactor, self.producer, self.errors.append,
            highWater=256 << 10, lowWater=64 << 10,
        )
        self.addCleanup(self.sender.abort)

    def test_interface(self) -> None:
        """
        It provides L{ISender}.
        """
        verifyObject(ISender, self.sender)

    async def test_ordered(self) -> None:
        """
        Bytes, bytearrays and memoryviews arrive in the order sent, whole,
        and the producer is paused above the high-water mark and resumed
        once the queue drained below the low one.
        """
        big = os.urandom(3 << 20)
        pieces = [b"head", bytearray(b"-mid-"), memoryview(big)[5:], b"", b"tail"]
        expected = b"head-mid-" + big[5:] + b"tail"
        received = deferToThread(readExactly, self.theirs, len(expected))
        self.sender.send(pieces)
        self.assertEqual(self.producer.calls, ["pause"])
        self.assertEqual(await received, expected)
        done: Deferred[None] = Deferred()
        self.sender.close(lambda: done.callback(None))
        await done
        self.assertEqual(self.producer.calls, ["pause", "resume"])
        self.assertEqual(self.sender.waiting, 0)
        self.assertEqual(self.sender.written, self.sender.queued)
        self.assertEqual(self.sender.fileno(), -1)
        self.assertEqual(self.errors, [])

    async def test_closeAfterFlush(self) -> None:
        """
        L{SocketSender.close} calls back only once everything queued was
        sent, and sends nothing queued after it.
        """
        data = os.urandom(2 << 20)
        self.sender.send([data])
        closed: list[bool] = []
        self.sender.close(lambda: closed.append(True))
        self.sender.send([b"late"])
        self.assertEqual(closed, [])
        self.assertEqual(await deferToThread(readExactly, self.theirs, len(data)), data)
        self.theirs.setblocking(False)
        for _ in range(100):
            if closed:
                break
            await deferToThread(lambda: None)
        self.assertEqual(closed, [True])

    async def test_peerGone(self) -> None:
        """
        A write to a socket whose peer closed reports the error once.
        """
        self.theirs.close()
        failed: Deferred[Exception] = Deferred()
        self.sender._failed = failed.callback  # type: ignore[assignment]
        self.sender.send([os.urandom(4 << 20)])
        error = await failed
        # EPIPE from the write itself, or the reactor's report of the
        # socket's error, whichever comes first.
        self.assertIsInstance(error, (OSError, ConnectionLost))
        self.assertEqual(self.sender.fileno(), -1)


class TransportSenderTests(SynchronousTestCase):
    """
    L{TransportSender} is the same interface over any transport.
    """

    def test_writes(self) -> None:
        """
        Pieces are written in order and the producer is registered
        (streaming) with the transport.
        """
        transport = StringTransport()
        producer = RecordingProducer()
        sender = TransportSender(transport, producer)
        verifyObject(ISender, sender)
        self.assertIs(transport.producer, producer)
        self.assertTrue(transport.streaming)
        sender.send([b"a", memoryview(b"bc"), bytearray(b"d")])
        self.assertEqual(transport.value(), b"abcd")
        closed: list[bool] = []
        sender.close(lambda: closed.append(True))
        self.assertEqual(closed, [True])

    def test_closeUnregistersFirst(self) -> None:
        """
        The producer is unregistered before the transport is told to close:
        a TLS transport sends its close only once none is registered, and
        a link closed with one registered would never close.
        """
        transport = StringTransport()
        sender = TransportSender(transport, RecordingProducer())
        registered: list[object] = []
        sender.close(lambda: registered.append(transport.producer))
        self.assertEqual(registered, [None])
