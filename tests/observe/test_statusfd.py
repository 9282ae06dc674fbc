"""
Tests for L{imgrelay.observe.statusfd}: lines to a descriptor that may not be
read, never blocking, with a bounded buffer.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.observe.statusfd import LineWriter


def fillPipe(w: int) -> int:
    """
    Make a pipe's buffer small, and fill it.

    @return: How many bytes it holds.
    """
    fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    os.set_blocking(w, False)
    held = 0
    while True:
        try:
            held += os.write(w, b"x" * 4096)
        except BlockingIOError:
            return held


def drain(r: int, n: int) -> bytes:
    """
    Read C{n} bytes (they are there) from C{r}.
    """
    data = b""
    while len(data) < n:
        data += os.read(r, n - len(data))
    return data


class LineWriterTests(SynchronousTestCase):
    """
    Tests for L{LineWriter}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.r, self.w = os.pipe()
        self.addCleanup(os.close, self.r)
        self.addCleanup(os.close, self.w)
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def logged(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.logs if e["log_level"] == level]

    def test_writesAtOnce(self) -> None:
        """
        With room in the pipe, lines are written at once, in order, and the
        writer does not wait on the reactor; the fd is made non-blocking.
        """
        writer = LineWriter(self.w, self.reactor)
        writer.writeLine(b"one\n")
        writer.writeLine(b"two\n")
        self.assertEqual(os.read(self.r, 100), b"one\ntwo\n")
        self.assertEqual(writer.pending, 0)
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertFalse(os.get_blocking(self.w))

    def test_fullPipeWaits(self) -> None:
        """
        A full pipe does not block: lines wait, the writer waits for room
        on the reactor, and once the reader reads they follow in order,
        whole, and the writer stops waiting.
        """
        held = fillPipe(self.w)
        writer = LineWriter(self.w, self.reactor)
        lines = [b"%d-" % i + b"y" * 1000 + b"\n" for i in range(6)]
        for line in lines:
            writer.writeLine(line)
        self.assertEqual(writer.pending, sum(map(len, lines)))
        self.assertEqual(self.reactor.getWriters(), [writer])
        out = b""
        self.assertEqual(drain(self.r, held), b"x" * held)
        while writer.pending:
            writer.doWrite()
            out += os.read(self.r, 1 << 16)
        self.assertEqual(out, b"".join(lines))
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.logged(LogLevel.warn), [])

    def test_dropsPastLimit(self) -> None:
        """
        Past the limit, whole lines are dropped with one warning; once the
        reader catches up, the next line is written and the count of
        dropped lines is logged.
        """
        held = fillPipe(self.w)
        writer = LineWriter(self.w, self.reactor, limit=25)
        for i in range(5):
            writer.writeLine(b"line %d........\n" % i)  # 15 bytes each
        self.assertEqual(writer.pending, 15)
        self.assertEqual(writer.dropped, 4)
        (warning,) = self.logged(LogLevel.warn)
        self.assertIn("not reading", warning)
        drain(self.r, held)
        writer.doWrite()
        writer.writeLine(b"after\n")
        self.assertEqual(os.read(self.r, 100), b"line 0........\nafter\n")
        self.assertIn("4 lines were dropped", self.logged(LogLevel.warn)[-1])

    def test_readerGone(self) -> None:
        """
        A reader that closed its end makes the writer give up with one
        error logged: further lines are ignored, nothing raises.
        """
        os.close(self.r)
        self.r = os.open(os.devnull, os.O_RDONLY)  # for the clean-up
        writer = LineWriter(self.w, self.reactor)
        writer.writeLine(b"one\n")
        writer.writeLine(b"two\n")
        self.assertTrue(writer.broken)
        self.assertEqual(writer.pending, 0)
        (error,) = self.logged(LogLevel.error)
        self.assertIn("cannot write", error)

    def test_regularFile(self) -> None:
        """
        A regular file is written at once (it is never full).
        """
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.remove, path)
        self.addCleanup(os.close, fd)
        writer = LineWriter(fd, self.reactor)
        writer.writeLine(b"{}\n")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"{}\n")
        self.assertEqual(self.reactor.getWriters(), [])
