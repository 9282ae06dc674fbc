# -*- test-case-name: tests.observe.test_statusfd -*-
"""
Lines for an orchestrator on a file descriptor it gave the daemon
(C{--status-fd N}), written without ever blocking the reactor.

An orchestrator that stops reading must not freeze the daemon: the fd is
made non-blocking, what cannot be written at once waits in a buffer written
as the fd drains, and past a bound whole lines are dropped with a warning.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Optional

from twisted.internet import abstract
from twisted.logger import Logger

#: The most bytes waiting for a slow reader; past it, lines are dropped.
DEFAULT_LIMIT = 1 << 20


class LineWriter(abstract.FileDescriptor):
    """
    Write whole lines to a file descriptor that may not be read.

    A pipe or socket that is full is written when the reactor says it has
    room; a regular file never is, and is written at once.

    @ivar limit: The most bytes buffered.
    @ivar dropped: Lines dropped since the buffer was last under the limit.
    @ivar broken: Whether the fd failed (its reader closed it): nothing is
        written any more.
    """

    log = Logger()

    def __init__(self, fd: int, reactor: Any, limit: int = DEFAULT_LIMIT) -> None:
        """
        @param fd: The descriptor; it is made non-blocking, and left open.
        @param reactor: The reactor to wait on for room.
        @param limit: The most bytes buffered.
        """
        abstract.FileDescriptor.__init__(self, reactor)
        os.set_blocking(fd, False)
        self._fd = fd
        self.limit = limit
        self._pending: deque[bytes] = deque()
        self._pendingBytes = 0
        self._offset = 0
        self.dropped = 0
        self.broken = False
        self.connected = 1

    def fileno(self) -> int:
        """
        @return: The descriptor.
        """
        return self._fd

    @property
    def pending(self) -> int:
        """
        @return: Bytes waiting for the reader.
        """
        return self._pendingBytes - self._offset

    def writeLine(self, line: bytes) -> None:
        """
        Write C{line} (which ends with a newline) now, or once the reader
        makes room; drop it if too much already waits.
        """
        if self.broken:
            return
        if self.pending + len(line) > self.limit:
            if not self.dropped:
                self.log.warn(
                    "status fd {fd}: the reader is not reading; {pending} bytes wait, dropping lines",
                    fd=self._fd, pending=self.pending,
                )
            self.dropped += 1
            return
        if self.dropped:
            self.log.warn("status fd {fd}: {dropped} lines were dropped", fd=self._fd, dropped=self.dropped)
            self.dropped = 0
        self._pending.append(line)
        self._pendingBytes += len(line)
        if len(self._pending) == 1:
            self._flush()

    def _flush(self) -> None:
        pending = self._pending
        while pending:
            first = pending[0]
            try:
                n = os.write(self._fd, memoryview(first)[self._offset :])
            except BlockingIOError:
                self.startWriting()
                return
            except OSError as e:
                self._break(e)
                return
            self._offset += n
            if self._offset == len(first):
                pending.popleft()
                self._pendingBytes -= len(first)
                self._offset = 0
        self.stopWriting()

    def _break(self, error: Exception) -> None:
        self.broken = True
        self.log.error("status fd {fd}: cannot write ({error}); no more status lines", fd=self._fd, error=error)
        self._pending.clear()
        self._pendingBytes = self._offset = 0
        self.stopWriting()

    def doWrite(self) -> Optional[BaseException]:
        """
        The reader made room: write what waits.
        """
        self._flush()
        return None
