# -*- test-case-name: tests.transport.test_pipes -*-
"""
The pipe ends CRIU passes: read on the dump side, written on the restore
side, each a L{FileDescriptor} on the reactor so that one slow pipe never
holds up another.
"""

from __future__ import annotations

import fcntl
import os
from collections import deque
from typing import Callable, Optional, Sequence, Union

from twisted.internet import abstract, main
from twisted.internet.interfaces import IReactorFDSet
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.core.interfaces import IReadBuffers
from imgrelay.transport.vmsplice import vmsplice

#: How much one read or write moves: pipes are raised to this size too.
PIPE_BLOCK = 1 << 20

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def preparePipe(fd: int, size: int = PIPE_BLOCK) -> None:
    """
    Make a received pipe end non-blocking and, where the kernel lets us,
    raise the pipe's capacity so each wake-up moves more.

    @param fd: The pipe end.
    @param size: The capacity wanted.
    """
    os.set_blocking(fd, False)
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        # Over /proc/sys/fs/pipe-max-size, or not a pipe: keep what it has.
        pass


@implementer(IReadBuffers)
class BufferRing:
    """
    Read buffers used again once the link has sent what was read into
    them: a pipe read into memory already touched costs no page faults,
    which were most of the proxy's time per GiB.

    The link sends in the order data is handed to it, so a buffer is free
    again once the link's count of bytes written passes the count of bytes
    queued when the buffer's data was handed on. A read smaller than
    L{copyBelow} is copied out instead, and its buffer is free at once: a
    small file must not hold a whole buffer until the link is done with it.
    The bound is a quarter of a buffer: copying 256 KiB out took 6 us here,
    allocating and touching a fresh 1 MiB buffer 440 us, and that is what a
    held buffer comes to once the ring has none free (in the CRIU trace
    scaled to 100 processes, a hundred reads of 64 to 256 KiB made a
    hundred such allocations).
    """

    #: Reads smaller than this are copied out of the buffer.
    copyBelow = PIPE_BLOCK // 4

    def __init__(self, written: Callable[[], int], queued: Callable[[], int], size: int = PIPE_BLOCK, keep: int = 16) -> None:
        """
        @param written: The link's bytes written (or copied away) so far.
        @param queued: The link's bytes queued so far.
        @param size: Each buffer's size.
        @param keep: How many buffers are kept for use again.
        """
        self._written = written
        self._queued = queued
        self.size = size
        self._keep = keep
        self._free: list[bytearray] = []
        self._busy: deque[tuple[int, bytearray]] = deque()

    def take(self) -> bytearray:
        """
        @return: A buffer free to read into.
        """
        written = self._written()
        busy = self._busy
        while busy and busy[0][0] <= written:
            self._free.append(busy.popleft()[1])
        return self._free.pop() if self._free else bytearray(self.size)

    def giveBack(self, buffer: bytearray) -> None:
        """
        C{buffer} is free again at once (what was read into it was copied).
        """
        if len(self._busy) + len(self._free) < self._keep:
            self._free.append(buffer)

    def handedOn(self, buffer: bytearray) -> None:
        """
        C{buffer}'s data was handed to the link: it is free once sent.
        """
        if len(self._busy) + len(self._free) < self._keep:
            self._busy.append((self._queued(), buffer))


class PipeReader(abstract.FileDescriptor):
    """
    Read a pipe to its end, handing each piece on as it arrives.

    It is a push producer: pausing it stops reading, so CRIU's writes block
    on a full pipe instead of imgrelay buffering.
    """

    def __init__(
        self,
        fd: int,
        reactor: IReactorFDSet,
        dataReceived: Callable[[bytes], None],
        ended: Callable[[Optional[Exception]], None],
        readSize: int = PIPE_BLOCK,
        ring: Optional[IReadBuffers] = None,
    ) -> None:
        """
        @param fd: The read end; it is closed when the pipe ends.
        @param reactor: The reactor to read on.
        @param dataReceived: Called with each piece read: C{bytes}, or with
            a C{ring} a view valid until the link sent it.
        @param ended: Called once, with None at EOF or the read error.
        @param readSize: The largest read.
        @param ring: Buffers to read into, or None for new C{bytes} each
            read.
        """
        abstract.FileDescriptor.__init__(self, reactor)
        preparePipe(fd, readSize)
        self._fd = fd
        self._dataReceived = dataReceived
        self._ended = ended
        self._error: Optional[Exception] = None
        self.readSize = readSize
        self._ring = ring
        self.connected = 1

    def fileno(self) -> int:
        """
        @return: The pipe's descriptor, or -1 once closed.
        """
        return self._fd

    def doRead(self) -> Optional[BaseException]:
        """
        Read one piece.
        """
        ring = self._ring
        try:
            if ring is None:
                data: Union[bytes, memoryview] = os.read(self._fd, self.readSize)
                n = len(data)
            else:
                buffer = ring.take()
                n = os.readv(self._fd, [buffer])
                if n < ring.copyBelow:
                    data = bytes(memoryview(buffer)[:n])
                    ring.giveBack(buffer)
                    ring = None
                else:
                    data = memoryview(buffer)[:n]
        except BlockingIOError:
            return None
        except OSError as e:
            self._error = e
            return main.CONNECTION_LOST
        if not n:
            return main.CONNECTION_DONE
        self._dataReceived(data)  # type: ignore[arg-type]
        if ring is not None:
            ring.handedOn(buffer)
        return None

    def connectionLost(self, reason: Failure) -> None:
        """
        The pipe ended. epoll reports a writer's close as a hang-up without
        a read event, which arrives here as a lost connection: unless a read
        failed, that is the pipe's EOF.
        """
        abstract.FileDescriptor.connectionLost(self, reason)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            self._ended(self._error)

    def abort(self) -> None:
        """
        Stop reading and close the pipe without reporting its end.
        """
        self.stopReading()
        fd, self._fd = self._fd, -1
        self.connected = 0
        self.disconnected = 1
        if fd >= 0:
            os.close(fd)


class PipeWriter(abstract.FileDescriptor):
    """
    Write an image held in memory into a pipe, then close it.

    Pieces are written straight from the image's memory, one block per
    wake-up, nothing buffered; with L{splice}, the pipe is handed the
    image's pages (C{vmsplice}) instead of a copy of them, so the image
    must not change until the reader has read it (a verified image never
    does).

    The image is written once the pipe has accepted all its bytes (written,
    or spliced as C{vmsplice} reports): the pipe is closed in that same
    turn and the end reported as a success, whatever the reader does next.
    CRIU reads the last byte and closes its end at once; the writer must
    not need another turn to find it was done, for the reactor reports the
    reader's close (a hang-up) instead of giving it that turn.

    @ivar splice: Whether to use C{vmsplice} where it works.
    @ivar size: The image's size in bytes.
    @ivar accepted: How many of its bytes the pipe has accepted so far.
    """

    splice = True

    def __init__(
        self,
        fd: int,
        reactor: IReactorFDSet,
        pieces: Sequence[bytes | memoryview],
        ended: Callable[[Optional[Exception]], None],
        writeSize: int = PIPE_BLOCK,
    ) -> None:
        """
        @param fd: The write end; it is closed when done.
        @param reactor: The reactor to write on.
        @param pieces: The content, in order.
        @param ended: Called once, with None when the pipe accepted every
            byte, or the error: C{BrokenPipeError}, or C{ConnectionError}
            if the reader went away before that.
        @param writeSize: The largest write.
        """
        abstract.FileDescriptor.__init__(self, reactor)
        preparePipe(fd, writeSize)
        self._fd = fd
        self._pieces = pieces
        self._index = 0
        self._offset = 0
        self.size = sum(len(piece) for piece in pieces)
        self.accepted = 0
        self._ended = ended
        self._error: Optional[Exception] = None
        self.writeSize = writeSize
        self.connected = 1

    def fileno(self) -> int:
        """
        @return: The pipe's descriptor, or -1 once closed.
        """
        return self._fd

    def doWrite(self) -> Optional[BaseException]:
        """
        Write the next block; once the pipe accepted the last byte, end.
        """
        while self.accepted < self.size:
            piece = self._pieces[self._index]
            if self._offset == len(piece):
                self._index += 1
                self._offset = 0
                continue
            view = memoryview(piece)[self._offset : self._offset + self.writeSize]
            try:
                n = vmsplice(self._fd, view) if self.splice else None
                if n is None:
                    n = os.write(self._fd, view)
            except BlockingIOError:
                return None
            except OSError as e:
                self._error = e
                return main.CONNECTION_LOST
            self._offset += n
            self.accepted += n
            if self.accepted < self.size:
                return None
        return main.CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        """
        Close the pipe and report how it ended.
        """
        abstract.FileDescriptor.connectionLost(self, reason)
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            if self._error is None and self.accepted < self.size:
                self._error = ConnectionError("pipe closed before the image was written")
            self._ended(self._error)
