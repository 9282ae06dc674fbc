# -*- test-case-name: tests.transport.test_senders -*-
"""
How the proxy puts bytes on its link.

Twisted's C{transport.write} takes bytes only, and joins what is pending
into one new string before each send: for a stream of 1 MiB chunks that is a
copy of every byte into fresh memory, which measured as the largest cost of
the whole proxy. L{SocketSender} instead gathers the pieces straight from
the buffers they were read into (C{os.writev} on a duplicate of the
connection's socket), holding at most a bounded amount before it pauses its
producer. L{TransportSender} is the same interface over any transport (TLS,
tests); it is chosen when the link is not a plain TCP socket.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Callable, Optional, Sequence

from twisted.internet import abstract, main, tcp
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, ITransport
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

Buffer = "bytes | memoryview"

#: Pause the producer when this much is waiting to be sent...
HIGH_WATER = 4 << 20
#: ...and resume it once the queue drained below this.
LOW_WATER = 1 << 20
#: The most pieces handed to one C{writev}.
_IOV_MAX = 64


class ISender(Interface):
    """
    An ordered byte sink for one link, with backpressure.
    """

    queued = Attribute("Bytes queued so far, in all.")
    written = Attribute("Bytes written (or copied away, or dropped) so far, in all.")

    def send(pieces: Sequence[bytes | memoryview]) -> None:
        """
        Queue C{pieces}, in order, after everything sent before. The caller
        must not change their buffers until L{written} passed L{queued} as
        it was after this call.
        """

    def close(done: Callable[[], None]) -> None:
        """
        Call C{done} once everything queued is sent; send nothing more.
        """

    def abort() -> None:
        """
        Drop whatever is queued and stop.
        """


@implementer(ISender)
class TransportSender:
    """
    L{ISender} over C{transport.writeSequence}; the transport pauses the
    producer when its buffer fills.
    """

    def __init__(self, transport: ITransport, producer: IPushProducer) -> None:
        self._transport = transport
        self.queued = 0
        transport.registerProducer(producer, True)  # type: ignore[attr-defined]

    @property
    def written(self) -> int:
        """
        See L{ISender.written}: the transport took copies of everything.
        """
        return self.queued

    def send(self, pieces: Sequence[bytes | memoryview]) -> None:
        """
        See L{ISender.send}.
        """
        self._transport.writeSequence([bytes(p) if isinstance(p, memoryview) else p for p in pieces])
        self.queued += sum(len(p) for p in pieces)

    def close(self, done: Callable[[], None]) -> None:
        """
        See L{ISender.close}: the transport flushes before it closes. The
        producer goes first: a transport that drains with a paused producer
        registered resumes it instead of closing, and a TLS transport sends
        its close (and so ever closes) only once none is registered.
        """
        self._transport.unregisterProducer()  # type: ignore[attr-defined]
        done()

    def abort(self) -> None:
        """
        See L{ISender.abort}.
        """


@implementer(ISender)
class SocketSender(abstract.FileDescriptor):
    """
    L{ISender} writing with C{os.writev} on a duplicate of a TCP
    connection's socket, so nothing is copied on the way out.

    Twisted keeps reading from the original descriptor; every write of the
    link goes through here, so the two never interleave.
    """

    def __init__(
        self,
        fd: int,
        reactor: IReactorFDSet,
        producer: IPushProducer,
        failed: Callable[[Exception], None],
        highWater: int = HIGH_WATER,
        lowWater: int = LOW_WATER,
    ) -> None:
        """
        @param fd: The duplicated socket descriptor; closed when done.
        @param reactor: Where to wait for the socket to take more.
        @param producer: Paused when more than C{highWater} bytes wait,
            resumed below C{lowWater}.
        @param failed: Called with the error if a write fails.
        """
        abstract.FileDescriptor.__init__(self, reactor)
        self._fd = fd
        self._queue: deque[memoryview] = deque()
        self._queued = 0
        self.queued = 0
        self.written = 0
        self._producer = producer
        self._paused = False
        self._failed = failed
        self._done: Optional[Callable[[], None]] = None
        self.highWater = highWater
        self.lowWater = lowWater
        self.connected = 1

    @classmethod
    def forTransport(
        cls, transport: ITransport, reactor: IReactorFDSet, producer: IPushProducer,
        failed: Callable[[Exception], None],
    ) -> Optional[SocketSender]:
        """
        A sender for C{transport} if it is a plain TCP connection, else None.
        """
        if type(transport) is not tcp.Client and type(transport) is not tcp.Server:
            return None
        fd = os.dup(transport.getHandle().fileno())
        return cls(fd, reactor, producer, failed)

    def fileno(self) -> int:
        """
        @return: The duplicated descriptor, or -1 once closed.
        """
        return self._fd

    @property
    def waiting(self) -> int:
        """
        @return: Bytes waiting to be sent.
        """
        return self._queued

    def send(self, pieces: Sequence[bytes | memoryview]) -> None:
        """
        See L{ISender.send}.
        """
        if self._fd < 0 or self._done is not None:
            return
        for piece in pieces:
            if len(piece):
                self._queue.append(memoryview(piece))
                self._queued += len(piece)
                self.queued += len(piece)
        if self._queued and not self.writing:
            self.startWriting()
        if self._queued > self.highWater and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

    @property
    def writing(self) -> bool:
        """
        Whether the reactor is watching for the socket to take more.
        """
        return self in self.reactor.getWriters()

    def doWrite(self) -> Optional[BaseException]:
        """
        Send as much as the socket takes now.
        """
        queue = self._queue
        while queue:
            batch = [queue[i] for i in range(min(len(queue), _IOV_MAX))]
            try:
                sent = os.writev(self._fd, batch)
            except BlockingIOError:
                break
            except OSError as e:
                self._error(e)
                return None
            self._queued -= sent
            self.written += sent
            for piece in batch:
                if sent >= len(piece):
                    sent -= len(piece)
                    queue.popleft()
                else:
                    queue[0] = piece[sent:]
                    sent = -1
                    break
            if sent < 0:
                break
        if self._paused and self._queued < self.lowWater:
            self._paused = False
            self._producer.resumeProducing()
        if not queue:
            self.stopWriting()
            if self._done is not None:
                self._finish()
        return None

    def close(self, done: Callable[[], None]) -> None:
        """
        See L{ISender.close}.
        """
        if self._done is not None or self._fd < 0:
            done()
            return
        self._done = done
        if not self._queue:
            self._finish()

    def _finish(self) -> None:
        done, self._done = self._done, None
        self.abort()
        if done is not None:
            done()

    def _error(self, error: Exception) -> None:
        self.abort()
        self._failed(error)

    def abort(self) -> None:
        """
        See L{ISender.abort}.
        """
        self.stopWriting()
        self._queue.clear()
        self._queued = 0
        self.written = self.queued
        fd, self._fd = self._fd, -1
        self.connected = 0
        self.disconnected = 1
        if fd >= 0:
            os.close(fd)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor dropped the descriptor (it reported an error).
        """
        if self._fd >= 0:
            self._error(reason.value if isinstance(reason.value, Exception) else main.CONNECTION_LOST)
