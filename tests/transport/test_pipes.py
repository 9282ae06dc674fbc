"""
Tests for L{imgrelay.transport.pipes}: reading and writing real pipes on the reactor.
"""

from __future__ import annotations

import mmap
import os
from typing import Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from imgrelay.core.interfaces import IReadBuffers
from imgrelay.transport import pipes as _pipes
from imgrelay.transport.pipes import BufferRing, PipeReader, PipeWriter
from imgrelay.testing.criu import readAll, writeAll
from imgrelay.testing.traces import patternBytes


class PipeReaderTests(TestCase):
    """
    L{PipeReader} reads a pipe to its end without blocking the reactor.
    """

    async def test_readsToEOF(self) -> None:
        """
        Everything written is handed on in order; the end is reported with
        None and the descriptor is closed.
        """
        r, w = os.pipe()
        content = patternBytes("reader", 3 << 20)
        pieces: list[bytes] = []
        ended: Deferred[Optional[Exception]] = Deferred()
        reader = PipeReader(r, reactor, pieces.append, ended.callback)
        reader.resumeProducing()
        written = deferToThread(lambda: (writeAll(w, content), os.close(w)))
        self.assertIsNone(await ended)
        await written
        self.assertEqual(b"".join(pieces), content)
        self.assertEqual(reader.fileno(), -1)
        self.assertRaises(OSError, os.fstat, r)

    async def test_pausedReaderDoesNotRead(self) -> None:
        """
        A paused reader is not registered with the reactor; resumed, it
        reads what waited in the pipe.
        """
        r, w = os.pipe()
        pieces: list[bytes] = []
        ended: Deferred[Optional[Exception]] = Deferred()
        reader = PipeReader(r, reactor, pieces.append, ended.callback)
        reader.resumeProducing()
        reader.pauseProducing()
        os.write(w, b"waiting")
        os.close(w)
        self.assertNotIn(reader, reactor.getReaders())
        reader.resumeProducing()
        self.assertIn(reader, reactor.getReaders())
        self.assertIsNone(await ended)
        self.assertEqual(b"".join(pieces), b"waiting")

    def test_abortClosesSilently(self) -> None:
        """
        L{PipeReader.abort} closes the pipe and reports nothing.
        """
        r, w = os.pipe()
        ended: list[Optional[Exception]] = []
        reader = PipeReader(r, reactor, lambda data: None, ended.append)
        reader.resumeProducing()
        reader.abort()
        self.assertNotIn(reader, reactor.getReaders())
        self.assertEqual(ended, [])
        self.assertRaises(BrokenPipeError, os.write, w, b"x")
        os.close(w)


class _ReaderAfterEachTurn(PipeWriter):
    """
    A L{PipeWriter} whose reader runs right after each of the writer's
    turns, before the reactor's next one: the way CRIU, woken by the pipe,
    reads what is there and closes its end while the reactor goes on.

    @ivar got: What the reader read.
    """

    def __init__(self, fd: int, readEnd: int, closeAfter: int, pieces: list[bytes | memoryview], ended: Deferred[Optional[Exception]]) -> None:
        """
        @param fd: The pipe's write end.
        @param readEnd: The pipe's read end, read without blocking.
        @param closeAfter: How many bytes the reader reads before it closes
            its end at once.
        @param pieces: The image.
        @param ended: Fired with how the writer ended.
        """
        PipeWriter.__init__(self, fd, reactor, pieces, ended.callback)
        os.set_blocking(readEnd, False)
        self._readEnd = readEnd
        self._closeAfter = closeAfter
        self.got = b""

    def doWrite(self) -> Optional[BaseException]:
        """
        The writer's turn, then the reader's.
        """
        why = PipeWriter.doWrite(self)
        if self._readEnd >= 0:
            try:
                self.got += os.read(self._readEnd, self._closeAfter - len(self.got))
            except BlockingIOError:
                pass
            if len(self.got) == self._closeAfter:
                os.close(self._readEnd)
                self._readEnd = -1
        return why


class PipeWriterTests(TestCase):
    """
    L{PipeWriter} writes an image from memory into a pipe and closes it.
    """

    async def test_writesAllPieces(self) -> None:
        """
        Pieces of every kind (bytes, bytearray, memoryview) arrive in order,
        then EOF.
        """
        r, w = os.pipe()
        big = patternBytes("writer", 5 << 20)
        pieces = [b"head", bytearray(b"middle"), memoryview(big)[1:], b""]
        ended: Deferred[Optional[Exception]] = Deferred()
        PipeWriter(w, reactor, pieces, ended.callback).startWriting()
        content = await deferToThread(readAll, r)
        os.close(r)
        self.assertIsNone(await ended)
        self.assertEqual(content, b"headmiddle" + big[1:])

    async def test_splicedMappings(self) -> None:
        """
        Pieces of a mapping are handed to the pipe with C{vmsplice}; other
        pieces are written; both arrive in order, as with plain writes.
        """
        calls: list[type] = []
        real = _pipes.vmsplice

        def recording(fd: int, view: memoryview) -> Optional[int]:
            n = real(fd, view)
            calls.append(type(view.obj) if n is not None else type(None))
            return n

        self.patch(_pipes, "vmsplice", recording)
        block = mmap.mmap(-1, 3 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        content = patternBytes("spliced", 3 << 20)
        block[:] = content
        r, w = os.pipe()
        ended: Deferred[Optional[Exception]] = Deferred()
        PipeWriter(w, reactor, [memoryview(block)[5:], bytearray(b"tail")], ended.callback).startWriting()
        got = await deferToThread(readAll, r)
        os.close(r)
        self.assertIsNone(await ended)
        self.assertEqual(got, content[5:] + b"tail")
        self.assertIn(mmap.mmap, calls)
        self.assertEqual(calls[-1], type(None))
        block.close()

    async def test_splicedPagesOutliveTheImage(self) -> None:
        """
        Spliced pages stay what they were for the reader even once the
        image is dropped and its mapping unmapped before the reader read
        them (a restore released while CRIU still reads its last pipe).
        """
        block = mmap.mmap(-1, 512 << 10, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        content = patternBytes("outlive", 512 << 10)
        block[:] = content
        r, w = os.pipe()
        ended: Deferred[Optional[Exception]] = Deferred()
        view = memoryview(block)
        PipeWriter(w, reactor, [view], ended.callback).startWriting()
        # The whole image fits in the pipe (raised to 1 MiB): the writer
        # ends unread.
        self.assertIsNone(await ended)
        view.release()
        block.close()
        # Memory the process maps next must not show through the pipe.
        other = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        other[:] = b"\xff" * (1 << 20)
        self.assertEqual(readAll(r), content)
        os.close(r)
        other.close()

    def test_heapNotSpliced(self) -> None:
        """
        Heap memory (a bytearray, which the allocator reuses once freed)
        and read-only memory are never spliced.
        """
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.assertIsNone(_pipes.vmsplice(w, memoryview(bytearray(b"abc"))))
        self.assertIsNone(_pipes.vmsplice(w, memoryview(b"abc")))
        self.assertEqual(os.get_blocking(w), True)

    async def test_emptyImage(self) -> None:
        """
        With nothing to write, the pipe is closed at once.
        """
        r, w = os.pipe()
        ended: Deferred[Optional[Exception]] = Deferred()
        PipeWriter(w, reactor, [], ended.callback).startWriting()
        self.assertIsNone(await ended)
        self.assertEqual(os.read(r, 10), b"")
        os.close(r)

    async def test_readerClosesAtOnceAfterLastByte(self) -> None:
        """
        A reader that reads exactly the image and closes its end at once,
        before the writer's next turn, got the whole image: the end is
        reported with None, though the reactor next reports the reader's
        close rather than giving the writer another turn.
        """
        r, w = os.pipe()
        big = patternBytes("last byte", 200 << 10)
        pieces: list[bytes | memoryview] = [b"head", big, b"tail", b""]
        content = b"head" + big + b"tail"
        ended: Deferred[Optional[Exception]] = Deferred()
        writer = _ReaderAfterEachTurn(w, r, len(content), pieces, ended)
        writer.startWriting()
        self.assertIsNone(await ended)
        self.assertEqual(writer.got, content)
        self.assertEqual((writer.accepted, writer.size), (len(content), len(content)))
        self.assertEqual(writer.fileno(), -1)

    async def test_splicedReaderClosesAtOnceAfterLastByte(self) -> None:
        """
        Bytes spliced into the pipe count as written once C{vmsplice}
        reports them taken: a reader that reads exactly a spliced image and
        closes at once sees the end reported with None.
        """
        spliced: list[int] = []
        real = _pipes.vmsplice

        def recording(fd: int, view: memoryview) -> Optional[int]:
            n = real(fd, view)
            if n is not None:
                spliced.append(n)
            return n

        self.patch(_pipes, "vmsplice", recording)
        block = mmap.mmap(-1, 300 << 10, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.addCleanup(block.close)
        content = patternBytes("spliced last byte", 300 << 10)
        block[:] = content
        r, w = os.pipe()
        ended: Deferred[Optional[Exception]] = Deferred()
        view = memoryview(block)
        self.addCleanup(view.release)
        writer = _ReaderAfterEachTurn(w, r, len(content), [view], ended)
        writer.startWriting()
        self.assertIsNone(await ended)
        self.assertEqual(writer.got, content)
        self.assertEqual(sum(spliced), len(content))

    async def test_emptyImageReaderClosedFirst(self) -> None:
        """
        An empty image is whole before anything is written: a reader that
        closes its end before the writer's first turn is no error.
        """
        r, w = os.pipe()
        os.close(r)
        ended: Deferred[Optional[Exception]] = Deferred()
        PipeWriter(w, reactor, [b""], ended.callback).startWriting()
        self.assertIsNone(await ended)

    async def test_readerClosesBeforeLastByte(self) -> None:
        """
        A reader that closes its end before the pipe accepted the whole
        image, right after reading a first part, is reported as an error.
        """
        r, w = os.pipe()
        pieces: list[bytes | memoryview] = [b"head", patternBytes("early", 100 << 10)]
        ended: Deferred[Optional[Exception]] = Deferred()
        writer = _ReaderAfterEachTurn(w, r, 4, pieces, ended)
        writer.startWriting()
        error = await ended
        # The reactor reports the reader's close (a ConnectionError from
        # the writer) or lets the writer find it (BrokenPipeError, one too).
        self.assertIsInstance(error, ConnectionError)
        self.assertEqual(writer.got, b"head")

    async def test_readerGone(self) -> None:
        """
        When the reader closes its end, the writer reports the broken pipe.
        """
        r, w = os.pipe()
        os.close(r)
        ended: Deferred[Optional[Exception]] = Deferred()
        PipeWriter(w, reactor, [b"x" * 100], ended.callback).startWriting()
        error = await ended
        self.assertIsInstance(error, OSError)


class BufferRingTests(TestCase):
    """
    L{BufferRing} gives a buffer out again only once the link sent its data.
    """

    def test_interface(self) -> None:
        """
        L{BufferRing} provides L{IReadBuffers}.
        """
        self.assertTrue(verifyObject(IReadBuffers, BufferRing(lambda: 0, lambda: 0, size=16)))

    def test_reuseAfterWritten(self) -> None:
        """
        A buffer handed on when the link had queued N bytes is given out
        again only once the link wrote N bytes; until then a new one is.
        """
        counters = {"written": 0, "queued": 0}
        ring = BufferRing(lambda: counters["written"], lambda: counters["queued"], size=16)
        first = ring.take()
        counters["queued"] = 16
        ring.handedOn(first)
        second = ring.take()
        self.assertIsNot(second, first)
        counters["written"] = 15
        self.assertIsNot(ring.take(), first)
        counters["written"] = 16
        self.assertIs(ring.take(), first)

    def test_keepsAtMost(self) -> None:
        """
        No more than C{keep} buffers are held for use again.
        """
        ring = BufferRing(lambda: 0, lambda: 1, size=4, keep=2)
        buffers = [ring.take() for _ in range(3)]
        for b in buffers:
            ring.handedOn(b)
        self.assertEqual(len(ring._busy), 2)

    async def test_readerUsesRing(self) -> None:
        """
        A reader with a ring reads into its buffers and hands on views of
        them, each valid until handed on.
        """
        r, w = os.pipe()
        ring = BufferRing(lambda: 0, lambda: 0, size=1 << 16)
        ring.copyBelow = 0
        pieces: list[bytes] = []
        kinds: set[type] = set()

        def received(data: object) -> None:
            kinds.add(type(data))
            pieces.append(bytes(data))  # type: ignore[call-overload]

        ended: Deferred[Optional[Exception]] = Deferred()
        reader = PipeReader(r, reactor, received, ended.callback, ring=ring)
        reader.resumeProducing()
        content = patternBytes("ring", 300000)
        written = deferToThread(lambda: (writeAll(w, content), os.close(w)))
        self.assertIsNone(await ended)
        await written
        self.assertEqual(b"".join(pieces), content)
        self.assertEqual(kinds, {memoryview})

    async def test_smallReadsCopied(self) -> None:
        """
        A read smaller than the ring's C{copyBelow} is handed on as C{bytes}
        and its buffer is free again at once, though the link has sent
        nothing: small files do not hold a buffer each.
        """
        r, w = os.pipe()
        ring = BufferRing(lambda: 0, lambda: 0, size=1 << 16)
        kinds: list[type] = []
        ended: Deferred[Optional[Exception]] = Deferred()
        reader = PipeReader(r, reactor, lambda data: kinds.append(type(data)), ended.callback, ring=ring)
        reader.resumeProducing()
        os.write(w, b"small")
        os.close(w)
        self.assertIsNone(await ended)
        self.assertEqual(kinds, [bytes])
        self.assertEqual((len(ring._free), len(ring._busy)), (1, 0))

    async def test_mediumReadsCopied(self) -> None:
        """
        A read of a few hundred KiB (a small process's pages image) is
        copied out too: each such read held a whole 1 MiB buffer until the
        cache's next report, and made the ring allocate a new one.
        """
        r, w = os.pipe()
        ring = BufferRing(lambda: 0, lambda: 0)
        kinds: list[type] = []
        ended: Deferred[Optional[Exception]] = Deferred()
        reader = PipeReader(r, reactor, lambda data: kinds.append(type(data)), ended.callback, ring=ring)
        reader.resumeProducing()
        writeAll(w, patternBytes("medium", 200 << 10))
        os.close(w)
        self.assertIsNone(await ended)
        self.assertEqual(kinds, [bytes])
        self.assertEqual((len(ring._free), len(ring._busy)), (1, 0))
