"""
Tests for L{imgrelay.proxy.packer}: chunks compressed in order, the queue
bounded, the raw path uncopied, and the agreement with the cache.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from imgrelay.proxy.interfaces import ILinkSender
from imgrelay.proxy.compresspolicy import FixedPolicy
from imgrelay.proxy.packer import MAX_PENDING, PROBE_SIZE, READ_LINK_EVERY, Packer, choose
from imgrelay.transport.tcpinfo import Delivery
from imgrelay.wire.codecs import LZ4, RAW, ZSTD, decode
from imgrelay.wire.link import MAX_CHUNK

HEAP = b"".join(b"key-%d:value-%d;" % (i % 97, i % 13) for i in range(40_000))


class _Stream:
    """
    Records what reaches the link.
    """

    ring = object()
    congested = False

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.readings: list[Optional[Delivery]] = []

    def delivery(self) -> Optional[Delivery]:
        return self.readings.pop(0) if self.readings else None

    def sendOpen(self, image: int, snapshotId: str, name: str, mode: int) -> None:
        self.sent.append(("open", image))

    def sendSnapshot(self, snapshotId: str) -> None:
        self.sent.append(("snapshot", snapshotId))

    def sendChunk(self, image: int, data: Any) -> None:
        self.sent.append(("raw", image, data))

    def sendPackedChunk(self, image: int, encoding: int, size: int, payload: bytes) -> None:
        self.sent.append(("packed", image, decode(encoding, payload, size)))

    def sendClose(self, image: int, size: int, crc: int) -> None:
        self.sent.append(("close", image))

    def sendDone(self, images: int, size: int, digest: bytes) -> None:
        self.sent.append(("done",))

    def sendAbort(self, reason: str) -> None:
        self.sent.append(("abort", reason))

    def chunks(self) -> list[tuple[str, bytes]]:
        return [(e[0], bytes(e[2])) for e in self.sent if e[0] in ("raw", "packed")]


class _Session:
    name = "s"

    def __init__(self) -> None:
        self.holds: set[str] = set()

    def hold(self, reason: str) -> None:
        self.holds.add(reason)

    def release(self, reason: str) -> None:
        self.holds.discard(reason)


class _Threads:
    """
    Runs work when the test says, in any order.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((work, args, d))
        return d

    def finish(self, index: int = 0) -> None:
        work, args, d = self.jobs.pop(index)
        d.callback(work(*args))


class PackerTests(SynchronousTestCase):
    """
    A packer compressing every chunk (C{--compress zstd}).
    """

    def setUp(self) -> None:
        self.stream = _Stream()
        self.session = _Session()
        self.threads = _Threads()
        self.packer = Packer(self.stream, self.session, FixedPolicy(ZSTD), self.threads)

    def test_interface(self) -> None:
        verifyObject(ILinkSender, self.packer)
        self.assertIs(self.packer.ring, self.stream.ring)

    def test_inOrder(self) -> None:
        """
        Whatever order the compressions end in, the link gets everything in
        the order the session sent it.
        """
        a, b = HEAP[:100_000], HEAP[100_000:200_000]
        self.packer.sendOpen(1, "", "a.img", 0)
        self.packer.sendChunk(1, a)
        self.packer.sendOpen(2, "", "b.img", 0)
        self.packer.sendChunk(2, b)
        self.packer.sendClose(1, len(a), 0)
        self.packer.sendDone(2, 0, b"")
        self.assertEqual(self.stream.sent, [("open", 1)])
        self.threads.finish(1)
        self.assertEqual(self.stream.sent, [("open", 1)])
        self.threads.finish(0)
        self.assertEqual([e[0] for e in self.stream.sent], ["open", "packed", "open", "packed", "close", "done"])
        self.assertEqual(self.stream.chunks(), [("packed", a), ("packed", b)])

    def test_queuedRawIsCopied(self) -> None:
        """
        A chunk that goes raw while another is being compressed is copied:
        its pipe buffer may be read into again before it goes out.
        """
        self.packer.sendChunk(1, HEAP[:50_000])
        buffer = bytearray(b"x" * 1000)
        self.packer.policy = FixedPolicy(RAW)
        self.packer.sendChunk(1, memoryview(buffer))
        buffer[:] = b"y" * 1000
        self.threads.finish()
        self.assertEqual(self.stream.chunks()[1], ("raw", b"x" * 1000))

    def test_rawUncopied(self) -> None:
        """
        With nothing queued, a raw chunk reaches the link as it was given.
        """
        self.packer.policy = FixedPolicy(RAW)
        view = memoryview(bytearray(b"abc"))
        self.packer.sendChunk(1, view)  # type: ignore[arg-type]
        self.assertIs(self.stream.sent[0][2].obj, view.obj)

    def test_notShrinking(self) -> None:
        """
        A chunk that does not shrink enough goes raw.
        """
        import os

        data = os.urandom(100_000)
        self.packer.sendChunk(1, data)
        self.threads.finish()
        self.assertEqual(self.stream.chunks(), [("raw", data)])

    def test_bounded(self) -> None:
        """
        At L{MAX_PENDING} compressions the session's pipes are held, and
        released when one ends.
        """
        for i in range(MAX_PENDING - 1):
            self.packer.sendChunk(1, HEAP[i * 1000:(i + 1) * 1000])
        self.assertEqual(self.session.holds, set())
        self.packer.sendChunk(1, HEAP[:1000])
        self.assertEqual(self.session.holds, {"compress"})
        self.threads.finish()
        self.assertEqual(self.session.holds, set())

    def test_largeChunkSplit(self) -> None:
        """
        A chunk over the largest the link takes is compressed in pieces.
        """
        data = (HEAP * ((MAX_CHUNK // len(HEAP)) + 2))[:MAX_CHUNK + 10]
        self.packer.sendChunk(1, data)
        self.assertEqual(len(self.threads.jobs), 2)
        self.threads.finish()
        self.threads.finish()
        self.assertEqual([len(c) for _, c in self.stream.chunks()], [MAX_CHUNK, 10])

    def test_failureGoesRaw(self) -> None:
        """
        A compression that fails sends its chunk raw, and the rest raw too,
        saying so once.
        """
        packer = Packer(self.stream, self.session, FixedPolicy(ZSTD), lambda *a: fail(MemoryError("no memory")))
        packer.sendChunk(1, HEAP[:1000])
        packer.sendChunk(1, HEAP[1000:2000])
        self.assertEqual(self.stream.chunks(), [("raw", HEAP[:1000]), ("raw", HEAP[1000:2000])])
        self.assertEqual(len(self.flushLoggedErrors(MemoryError)), 1)

    def test_abortSkipsQueue(self) -> None:
        """
        An abort goes out at once; what was queued is dropped.
        """
        self.packer.sendChunk(1, HEAP[:1000])
        self.packer.sendClose(1, 1000, 0)
        self.packer.sendAbort("gone")
        self.assertEqual(self.stream.sent, [("abort", "gone")])
        self.threads.finish()
        self.assertEqual(self.stream.sent, [("abort", "gone")])

    def test_inThreadsForReal(self) -> None:
        """
        With work run at once (as in a thread), chunks go out compressed.
        """
        packer = Packer(self.stream, self.session, FixedPolicy(LZ4), maybeDeferred)
        packer.sendChunk(3, HEAP)
        self.assertEqual(self.stream.chunks(), [("packed", HEAP)])


class ChooseTests(SynchronousTestCase):
    """
    The proxy's C{--compress} against what the cache offers.
    """

    def test_choices(self) -> None:
        self.assertEqual(choose("auto", [LZ4, ZSTD])[0], [ZSTD, LZ4])
        self.assertEqual(choose("auto", [LZ4])[0], [LZ4])
        self.assertEqual(choose("lz4", [ZSTD, LZ4])[0], [LZ4])
        self.assertEqual(choose("zstd", [ZSTD])[0], [ZSTD])
        self.assertEqual(choose("none", [ZSTD, LZ4])[0], [])

    def test_olderCache(self) -> None:
        """
        A cache that offers nothing (an older one) gets raw chunks, and the
        log says why.
        """
        codecs, why = choose("auto", [])
        self.assertEqual(codecs, [])
        self.assertIn("decodes no compression", why)
        codecs, why = choose("zstd", [LZ4])
        self.assertEqual(codecs, [])
        self.assertIn("decodes only lz4", why)


class CongestedTests(SynchronousTestCase):
    """
    L{LinkStream.congested}: what tells auto the link is the bottleneck.
    """

    def test_pushBackRemembered(self) -> None:
        """
        A push back from the transport counts for a moment after it.
        """
        from twisted.internet.task import Clock

        from imgrelay.proxy.session import ProxySession
        from imgrelay.proxy.stream import PUSHBACK_MEMORY, LinkStream

        clock = Clock()
        stream = LinkStream(ProxySession("s", clock.seconds))
        self.assertFalse(stream.congested)
        stream.session.pause()
        stream.session.resume()
        self.assertTrue(stream.congested)
        clock.advance(PUSHBACK_MEMORY)
        self.assertFalse(stream.congested)

    def test_held(self) -> None:
        """
        A quarter of the window unacknowledged counts too.
        """
        from twisted.internet.task import Clock

        from imgrelay.proxy.session import ProxySession
        from imgrelay.proxy.stream import MIN_WINDOW, LinkStream

        stream = LinkStream(ProxySession("s", Clock().seconds), MIN_WINDOW)
        stream.outbound.append([bytes(MIN_WINDOW // 4 - 1)])
        self.assertFalse(stream.congested)
        stream.outbound.append([b"x"])
        self.assertTrue(stream.congested)


class ProbeTests(SynchronousTestCase):
    """
    A chunk tried with a codec for the measures does not wait for it.
    """

    def test_probeOnTheSide(self) -> None:
        """
        The chunk goes raw at once; its copy is compressed on the side, one
        at a time, and the policy learns the codec's ratio.
        """
        from imgrelay.proxy.compresspolicy import AutoPolicy

        stream, session, threads = _Stream(), _Session(), _Threads()
        stream.congested = True
        policy = AutoPolicy([ZSTD])
        packer = Packer(stream, session, policy, threads)
        packer.sendChunk(1, HEAP[:300_000])
        packer.sendChunk(1, HEAP[300_000:600_000])
        self.assertEqual([kind for kind, _ in stream.chunks()], ["raw", "raw"])
        self.assertEqual(len(threads.jobs), 1)
        # A quarter of a MiB of the chunk is tried, not all of it.
        self.assertEqual(threads.jobs[0][1][1], HEAP[:PROBE_SIZE])
        threads.finish()
        ratio = policy.codecs[ZSTD].ratio
        assert ratio is not None
        self.assertGreater(ratio, 3)


class _RecordingPolicy(FixedPolicy):
    """
    Compresses every chunk with Zstandard and records what it is fed.
    """

    def __init__(self) -> None:
        FixedPolicy.__init__(self, ZSTD)
        self.feeds: list[tuple[float, int, bool]] = []
        self.rates: list[float] = []

    def fed(self, now: float, size: int, holding: bool) -> None:
        self.feeds.append((now, size, holding))

    def delivered(self, now: float, rate: float) -> None:
        self.rates.append(rate)


class FedTests(SynchronousTestCase):
    """
    The policy learns each chunk as it enters the stream, and whether the
    stream was holding its source back then.
    """

    def setUp(self) -> None:
        self.stream, self.session, self.threads = _Stream(), _Session(), _Threads()
        self.policy = _RecordingPolicy()
        self.now = 0.0
        self.packer = Packer(self.stream, self.session, self.policy, self.threads, clock=lambda: self.now)

    def test_compressionsAtTheirLimit(self) -> None:
        """
        Chunks that come while compressions are few are not held back by
        the stream; one that comes once a compression ends while the rest
        are still running is (the session was held until then).
        """
        for i in range(MAX_PENDING):
            self.now = float(i)
            self.packer.sendChunk(1, HEAP[:1000])
        self.assertEqual(self.session.holds, {"compress"})
        self.threads.finish()
        self.now = 9.0
        self.packer.sendChunk(1, HEAP[:500])
        self.assertEqual(
            self.policy.feeds,
            [(float(i), 1000, i >= MAX_PENDING - 1) for i in range(MAX_PENDING)] + [(9.0, 500, True)],
        )

    def test_congested(self) -> None:
        """
        A chunk that comes while the link pushes back comes held back.
        """
        self.stream.congested = True
        self.packer.sendChunk(1, HEAP[:1000])
        self.assertEqual(self.policy.feeds, [(0.0, 1000, True)])


class _Ticks:
    """
    A clock that moves on by C{step} each time it is read.
    """

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class LinkMeasureTests(SynchronousTestCase):
    """
    Before each chunk, the policy gets the kernel's measure of the link,
    when the link was what limited the connection.
    """

    def test_onlyWhenTheLinkLimited(self) -> None:
        """
        A reading taken while the sender had too little to send, or after
        the receiver's window held the connection back, is not the link's.
        """
        stream, session, threads = _Stream(), _Session(), _Threads()
        policy = _RecordingPolicy()
        clock = _Ticks(READ_LINK_EVERY)
        packer = Packer(stream, session, policy, threads, clock=clock)
        stream.congested = True
        stream.readings = [
            Delivery(118e6, False, 0),
            Delivery(40e6, True, 0),
            Delivery(50e6, False, 700),
            Delivery(119e6, False, 700),
            None,
        ]
        for _ in range(5):
            packer.sendChunk(1, HEAP[:1000])
        self.assertEqual(policy.rates, [118e6, 119e6])

    def test_onlyOnceItPushedBack(self) -> None:
        """
        Readings taken before the link pushed back (its queues still
        filling, faster than its rate) are not its rate.
        """
        stream, session, threads = _Stream(), _Session(), _Threads()
        policy = _RecordingPolicy()
        packer = Packer(stream, session, policy, threads, clock=_Ticks(READ_LINK_EVERY))
        stream.readings = [Delivery(1242e6, False, 0), Delivery(119e6, False, 0)]
        packer.sendChunk(1, HEAP[:1000])
        stream.congested = True
        packer.sendChunk(1, HEAP[:1000])
        self.assertEqual(policy.rates, [119e6])

    def test_notTooOften(self) -> None:
        """
        Chunks that come less than L{READ_LINK_EVERY} after the last
        reading do not read the kernel's measure again.
        """
        stream, session, threads = _Stream(), _Session(), _Threads()
        policy = _RecordingPolicy()
        now = [0.0]
        packer = Packer(stream, session, policy, threads, clock=lambda: now[0])
        stream.congested = True
        stream.readings = [Delivery(float(n), False, 0) for n in range(1, 10)]
        for t in (0.0, 0.001, 0.002, 0.006, 0.007, 0.0115, 0.012):
            now[0] = t
            packer.sendChunk(1, HEAP[:1000])
        self.assertEqual(policy.rates, [1.0, 2.0, 3.0])
