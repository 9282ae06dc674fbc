"""
Tests for L{imgrelay.transport.receiver}, on real TCP connections on 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import termios
import time
from typing import Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgrelay.transport.receiver import HEADER_READ, LOW_WATER_MAX, LOW_WATER_MIN, IPayloadReceiver, SocketReceiver


@implementer(IPayloadReceiver)
class Payload:
    """
    A receiver expecting one payload of C{size} bytes, then anything.
    """

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self.filled = 0
        self.data = bytearray()
        self.calls: list[str] = []
        self.reason: Optional[Failure] = None
        self.lost: Deferred[None] = Deferred()

    def payloadTarget(self) -> Optional[memoryview]:
        if self.filled == len(self.buffer):
            return None
        return memoryview(self.buffer)[self.filled :]

    def payloadReceived(self, n: int) -> None:
        self.calls.append(f"payload {n}")
        self.filled += n

    def payloadRemaining(self) -> int:
        return len(self.buffer) - self.filled

    def dataReceived(self, data: bytes) -> None:
        self.calls.append(f"data {len(data)}")
        self.data += data

    def receiverLost(self, reason: Failure) -> None:
        self.calls.append("lost")
        self.reason = reason
        self.lost.callback(None)


def tcpPair() -> tuple[socket.socket, socket.socket]:
    """
    @return: The two ends of a TCP connection on 127.0.0.1, the first
        non-blocking.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    return ours, theirs


def readable(sock: socket.socket, timeout: float) -> bool:
    """
    @return: Whether C{sock} is reported readable within C{timeout} seconds.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def queued(sock: socket.socket) -> int:
    """
    @return: How many bytes wait unread in C{sock}'s receive queue.
    """
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])


def waitQueued(sock: socket.socket, n: int, timeout: float = 10) -> None:
    """
    Wait until C{n} bytes wait unread in C{sock}'s receive queue, which
    C{poll} does not tell while the low-water mark is above C{n}.

    @param timeout: Only a bound for a broken run: on 127.0.0.1 the bytes
        are there once the peer's C{sendall} returned.
    """
    deadline = time.monotonic() + timeout
    while queued(sock) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {queued(sock)} of {n} bytes arrived in {timeout} s")
        time.sleep(0.001)


def lowWater(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


class SocketReceiverTests(TestCase):
    """
    L{SocketReceiver} reads a payload into its place, what follows it to
    C{dataReceived}, and waits for the rest of a payload in one go.
    """

    def setUp(self) -> None:
        self.ours, self.theirs = tcpPair()
        self.addCleanup(self.theirs.close)

    def receiver(self, payload: Payload) -> SocketReceiver:
        receiver = SocketReceiver(self.ours, reactor, payload)
        self.addCleanup(receiver.close)
        return receiver

    def startedPayload(self, size: int) -> tuple[Payload, SocketReceiver]:
        """
        @return: A receiver that has read the first 100 bytes of a payload
            of C{size}, and its payload.
        """
        payload = Payload(size)
        receiver = self.receiver(payload)
        self.theirs.sendall(b"x" * 100)
        self.assertTrue(readable(self.ours, 10))
        receiver.doRead()
        self.assertEqual(payload.filled, 100)
        return payload, receiver

    def test_interface(self) -> None:
        """
        The test's receiver provides the interface the cache link does.
        """
        self.assertTrue(verifyObject(IPayloadReceiver, Payload(1)))

    def test_payloadAndWhatFollows(self) -> None:
        """
        One read fills the payload's place and hands the bytes after it to
        C{dataReceived}, in that order.
        """
        payload = Payload(1000)
        receiver = self.receiver(payload)
        content = bytes(range(256)) * 4 + b"next header"
        self.theirs.sendall(content)
        self.assertTrue(readable(self.ours, 10))
        receiver.doRead()
        self.assertEqual(payload.calls, ["payload 1000", f"data {len(content) - 1000}"])
        self.assertEqual(bytes(payload.buffer), content[:1000])
        self.assertEqual(bytes(payload.data), content[1000:])

    def test_whatFollowsIsBounded(self) -> None:
        """
        At most L{HEADER_READ} bytes past the payload are read with it.
        """
        payload = Payload(10)
        receiver = self.receiver(payload)
        self.theirs.sendall(b"p" * 10 + b"h" * (HEADER_READ + 5))
        self.assertTrue(readable(self.ours, 10))
        receiver.doRead()
        self.assertEqual(payload.calls, ["payload 10", f"data {HEADER_READ}"])

    def test_lowWaterInsidePayload(self) -> None:
        """
        While a large payload is partly read, the socket's low-water mark is
        what is left of it (at most L{LOW_WATER_MAX}); once it is complete,
        the mark is back to one byte.
        """
        size = LOW_WATER_MIN * 4
        payload, receiver = self.startedPayload(size)
        self.assertEqual(lowWater(self.ours), size - 100)
        self.theirs.sendall(b"y" * (size - 100))
        self.assertTrue(readable(self.ours, 10))
        while payload.filled < size:
            receiver.doRead()
        self.assertEqual(lowWater(self.ours), 1)

    def test_lowWaterCapped(self) -> None:
        """
        The mark never exceeds L{LOW_WATER_MAX}, and a payload with less
        than L{LOW_WATER_MIN} left is read as it comes.
        """
        payload = Payload(LOW_WATER_MAX * 3)
        receiver = self.receiver(payload)
        self.theirs.sendall(b"x")
        self.assertTrue(readable(self.ours, 10))
        receiver.doRead()
        self.assertEqual(lowWater(self.ours), LOW_WATER_MAX)

        small = Payload(LOW_WATER_MIN)
        other, theirs = tcpPair()
        self.addCleanup(theirs.close)
        receiver = SocketReceiver(other, reactor, small)
        self.addCleanup(receiver.close)
        theirs.sendall(b"x")
        self.assertTrue(readable(other, 10))
        receiver.doRead()
        self.assertEqual(lowWater(other), 1)

    def test_waitsForTheRest(self) -> None:
        """
        Inside a payload, the socket is not readable for a part of the rest,
        and is once all of it is there: one wake-up per chunk, not one per
        piece that arrives.
        """
        size = LOW_WATER_MIN * 4
        payload, receiver = self.startedPayload(size)
        self.theirs.sendall(b"y" * 1000)
        # The part has arrived, and still does not wake the reader.
        waitQueued(self.ours, 1000)
        self.assertEqual(queued(self.ours), 1000)
        self.assertFalse(readable(self.ours, 0))
        self.theirs.sendall(b"z" * (size - 1100))
        self.assertTrue(readable(self.ours, 10))
        receiver.doRead()
        self.assertEqual(payload.calls, ["payload 100", f"payload {size - 100}"])
        self.assertEqual(bytes(payload.buffer), b"x" * 100 + b"y" * 1000 + b"z" * (size - 1100))

    def test_peerGoneInsidePayload(self) -> Deferred[None]:
        """
        A peer that closes in the middle of a payload is noticed although
        the rest of the payload never comes.
        """
        payload, receiver = self.startedPayload(LOW_WATER_MIN * 4)
        self.assertGreater(lowWater(self.ours), 1)
        self.theirs.sendall(b"y" * 50)
        self.theirs.close()
        receiver.startReading()

        def lost(_: None) -> None:
            assert payload.reason is not None
            self.assertTrue(payload.reason.check(ConnectionDone))
            self.assertEqual(payload.calls, ["payload 100", "payload 50", "lost"])

        return payload.lost.addCallback(lost)
