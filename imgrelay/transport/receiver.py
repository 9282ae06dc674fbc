# -*- test-case-name: tests.transport.test_receiver -*-
"""
How the cache reads its link: inside a chunk's payload, straight into the
image's memory; between payloads, headers in small reads fed to the
framer.

Inside a payload the socket's low-water mark (C{SO_RCVLOWAT}) is raised to
what is left of it (up to L{LOW_WATER_MAX}), so the reactor wakes the
receiver once the rest of the chunk is there rather than for every piece
that arrives: the payload is read with one call, along with whatever
follows it (the next header, in a spare buffer). With 1 MiB chunks that
halved the reads and cut the wake-ups by two fifths, and with them the
Python run for each. The kernel
still wakes the reader early if its receive window would otherwise close,
and at the end of the stream.

Twisted's transport reads into a new string every time, which the image
store then had to copy again. L{SocketReceiver} reads a duplicate of the
connection's socket instead, while the transport (no longer reading) still
writes the cache's answers and closes the connection.
"""

from __future__ import annotations

import os
import socket
from typing import Optional

from twisted.internet import abstract, error, main, tcp
from twisted.internet.interfaces import IReactorFDSet, ITransport
from twisted.python.failure import Failure
from zope.interface import Interface

#: The read size between payloads: headers, and small payloads with them.
HEADER_READ = 64 << 10

#: Inside a payload, wait for at most this much of it before reading.
LOW_WATER_MAX = 1 << 20

#: A payload with less than this left is read as it comes.
LOW_WATER_MIN = 64 << 10


class IPayloadReceiver(Interface):
    """
    What a L{SocketReceiver} reads for.
    """

    def payloadTarget() -> Optional[memoryview]:
        """
        Where the next bytes go if they are payload, or None to have them
        handed to C{dataReceived}.
        """

    def payloadReceived(n: int) -> None:
        """
        C{n} bytes were received at the start of the last target.
        """

    def payloadRemaining() -> int:
        """
        How many bytes of the current payload are still to come (0 between
        payloads): the receiver waits for them before reading.
        """

    def dataReceived(data: bytes) -> None:
        """
        Bytes that are not (known to be) payload.
        """

    def receiverLost(reason: Failure) -> None:
        """
        The socket reached its end or failed; nothing more will be read.
        """


class SocketReceiver(abstract.FileDescriptor):
    """
    See the module docstring.
    """

    def __init__(self, sock: socket.socket, reactor: IReactorFDSet, receiver: IPayloadReceiver) -> None:
        """
        @param sock: A non-blocking duplicate of the connection's socket;
            closed when done.
        @param reactor: Where to wait for data.
        @param receiver: Where it goes.
        """
        abstract.FileDescriptor.__init__(self, reactor)
        self._sock = sock
        self._receiver = receiver
        self._spare = bytearray(HEADER_READ)
        self._lowWater = 1
        self.connected = 1

    @classmethod
    def forTransport(
        cls, transport: ITransport, reactor: IReactorFDSet, receiver: IPayloadReceiver
    ) -> Optional[SocketReceiver]:
        """
        Take over reading C{transport} if it is a plain TCP connection.

        @return: The started receiver, or None for any other transport.
        """
        if type(transport) is not tcp.Server and type(transport) is not tcp.Client:
            return None
        sock = socket.socket(fileno=os.dup(transport.getHandle().fileno()))
        sock.setblocking(False)
        transport.stopReading()
        self = cls(sock, reactor, receiver)
        self.startReading()
        return self

    def fileno(self) -> int:
        """
        @return: The duplicate's descriptor, -1 once closed.
        """
        return self._sock.fileno()

    def doRead(self) -> Optional[BaseException]:
        """
        Read into the payload's place (and what follows it into the spare
        buffer), or read headers.
        """
        receiver = self._receiver
        target = receiver.payloadTarget()
        try:
            if target is not None:
                n = self._sock.recvmsg_into([target, self._spare])[0]
                if not n:
                    return main.CONNECTION_DONE
                inTarget = min(n, len(target))
                receiver.payloadReceived(inTarget)
                if n > inTarget and self.connected:
                    receiver.dataReceived(bytes(memoryview(self._spare)[: n - inTarget]))
            else:
                data = self._sock.recv(HEADER_READ)
                if not data:
                    return main.CONNECTION_DONE
                receiver.dataReceived(data)
            if self.connected:
                self._setLowWater(receiver.payloadRemaining())
        except BlockingIOError:
            return None
        except OSError as e:
            return error.ConnectionLost(str(e))
        return None

    def _setLowWater(self, remaining: int) -> None:
        """
        Wake up for the rest of the current payload at once, or for any byte
        between payloads.
        """
        mark = min(remaining, LOW_WATER_MAX) if remaining >= LOW_WATER_MIN else 1
        if mark != self._lowWater:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            self._lowWater = mark

    def connectionLost(self, reason: Failure) -> None:
        """
        Close the duplicate and tell the receiver.
        """
        abstract.FileDescriptor.connectionLost(self, reason)
        if self._sock.fileno() >= 0:
            self._sock.close()
            self._receiver.receiverLost(reason)

    def close(self) -> None:
        """
        Stop reading and close the duplicate, telling nobody.
        """
        self.stopReading()
        self.connected = 0
        self.disconnected = 1
        self._sock.close()
