"""
Tests for encoded chunks on the cache's side (L{imgrelay.cache.unpack},
with L{CacheLinkState} and L{CacheLinkProtocol}): decoded off the reactor
while the stream waits, verified over the image's bytes, refused when
hostile.
"""

from __future__ import annotations

import random
from typing import Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.cache.listener import CacheLinkFactory
from imgrelay.core.store import SessionState
from imgrelay.wire.codecs import LZ4, RAW, ZSTD, BadChunk, decode, encode
from imgrelay.wire.link import MAX_CHUNK, ProxyMessage, frame
from imgrelay.wire.pb import link_pb2
from tests.cache.helpers import LinkTestMixin, chunk, done, hello, imageClose, imageOpen


def packed(image: int, data: bytes, encoding: int = ZSTD, size: Optional[int] = None,
           payload: Optional[bytes] = None) -> bytes:
    """
    @return: An encoded chunk's header and payload.
    """
    body = encode(encoding, data) if payload is None else payload
    header = link_pb2.Chunk(image=image, length=len(body), encoding=encoding,  # type: ignore[arg-type]
                            size=len(data) if size is None else size)
    return frame(ProxyMessage(chunk=header)) + body


def _content(n: int) -> bytes:
    rng = random.Random(n)
    return b"".join(b"obj-%d;" % rng.randrange(100) for _ in range(n // 5))[:n]


class _Decoder:
    """
    A decoder the test finishes by hand.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[tuple[int, bytes, int], Deferred[bytes]]] = []

    def __call__(self, encoding: int, payload: bytes, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.jobs.append(((encoding, payload, size), d))
        return d

    def finish(self) -> None:
        job, d = self.jobs.pop(0)
        try:
            out = decode(*job)
        except BadChunk:
            d.errback(Failure())
        else:
            d.callback(out)


class EncodedChunkTests(LinkTestMixin, SynchronousTestCase):
    """
    A link that brings encoded chunks, over a transport the protocol reads
    through C{dataReceived}.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        protocol.dataReceived(data)

    def setUp(self) -> None:
        self.decoder = _Decoder()
        super().setUp()

    def connect(self) -> tuple[CacheLinkProtocol, StringTransport]:
        protocol = CacheLinkProtocol(self.slot, self.clock.seconds, decoder=self.decoder)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_offered(self) -> None:
        """
        The accept lists Zstandard and LZ4.
        """
        self.deliver(hello())
        [accept] = self.replies()
        self.assertEqual(list(accept.accept.encodings), [ZSTD, LZ4])

    def test_waitsForTheDecoding(self) -> None:
        """
        What follows an encoded chunk waits, unread, until the chunk is
        decoded: the image's close is verified over the decoded bytes, a
        raw chunk after it lands after it.
        """
        first, second = _content(300_000), b"raw tail"
        whole = first + second
        self.deliver(
            hello(), imageOpen(1, "pages-1.img"), packed(1, first), chunk(1, second), imageClose(1, whole),
            done([("", "pages-1.img", whole)]),
        )
        self.assertEqual(self.kinds(), ["accept"])
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(len(self.decoder.jobs), 1)
        self.decoder.finish()
        self.assertEqual(self.kinds(), ["accept", "ack", "done_ok"])
        self.assertEqual(self.transport.producerState, "producing")
        image = self.session.images[("", "pages-1.img")]
        self.assertTrue(image.data.tobytes() == whole)
        self.assertIs(self.session.state, SessionState.COMPLETE)

    def test_oneAtATime(self) -> None:
        """
        Two encoded chunks in one read: the second is decoded after the
        first, in order, and bytes fed meanwhile wait too.
        """
        a, b = _content(50_000), _content(70_000)
        self.deliver(hello(), imageOpen(1, "a.img"), packed(1, a, LZ4), packed(1, b))
        self.assertEqual(len(self.decoder.jobs), 1)
        self.deliver(imageClose(1, a + b))
        self.decoder.finish()
        self.assertEqual(len(self.decoder.jobs), 1)
        self.assertEqual(self.kinds(), ["accept"])
        self.decoder.finish()
        self.assertEqual(self.kinds(), ["accept", "ack"])
        self.assertTrue(self.session.images[("", "a.img")].data.tobytes() == a + b)

    def test_emptyEncodedChunk(self) -> None:
        """
        An encoded chunk of nothing.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), packed(1, b""), imageClose(1, b""))
        self.decoder.finish()
        self.assertEqual(self.kinds(), ["accept", "ack"])

    def test_corrupt(self) -> None:
        """
        A payload that does not decode fails the session, naming why.
        """
        body = bytearray(encode(ZSTD, _content(10_000)))
        body[len(body) // 2] ^= 0xFF
        self.deliver(hello(), imageOpen(1, "a.img"), packed(1, _content(10_000), payload=bytes(body)))
        self.decoder.finish()
        self.assertSessionFailed("zstd chunk")

    def test_wrongSize(self) -> None:
        """
        A chunk that decodes to more than its header said fails the session.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), packed(1, _content(10_000), LZ4, size=9_000))
        self.decoder.finish()
        self.assertSessionFailed("lz4 chunk")

    def test_oversized(self) -> None:
        """
        A chunk announcing more than the largest chunk is refused at its
        header, before any payload is held.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), packed(1, b"x", size=MAX_CHUNK + 1))
        self.assertSessionFailed(f"over {MAX_CHUNK}")
        self.assertEqual(self.decoder.jobs, [])

    def test_notOffered(self) -> None:
        """
        An encoding the cache did not offer is a protocol error.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), packed(1, b"abc", encoding=7, payload=b"abc"))
        self.assertSessionFailed("which this cache did not offer")

    def test_decoderFails(self) -> None:
        """
        A decoder that breaks (not a bad chunk) fails the session too.
        """
        self.protocol, self.transport = self.connect()
        self.protocol._decoder = lambda *job: fail(RuntimeError("thread pool gone"))  # type: ignore[assignment]
        self.deliver(hello(), imageOpen(1, "a.img"), packed(1, _content(1000)))
        self.assertSessionFailed("thread pool gone")
        self.flushLoggedErrors(RuntimeError)

    def test_resumedWhileDecoding(self) -> None:
        """
        A link lost while its chunk is decoded: the decoded bytes still
        land in the session, which waits for its proxy; the resumed link
        goes on after them with what the first link had brought, then
        with its own.
        """
        clock = Clock()
        factory = CacheLinkFactory(self.slot, clock.seconds, clock, decoder=self.decoder)
        first, transport = factory.buildProtocol(None), StringTransport()
        first.makeConnection(transport)
        content = _content(1000)
        first.dataReceived(_hello(False) + imageOpen(1, "a.img") + packed(1, content) + chunk(1, b"more"))
        first.connectionLost(Failure(ConnectionLost("gone")))
        self.decoder.finish()
        session = self.slot.current
        self.assertIs(session.state, SessionState.RECEIVING)
        second, transport = factory.buildProtocol(None), StringTransport()
        second.makeConnection(transport)
        second.dataReceived(_hello(True))
        second.dataReceived(imageClose(1, content + b"more"))
        self.assertEqual(self.kinds(transport), ["accept", "ack"])
        self.assertTrue(session.images[("", "a.img")].data.tobytes() == content + b"more")


def _hello(resume: bool) -> bytes:
    return frame(ProxyMessage(hello=link_pb2.Hello(version=1, session="mig", resume=resume, resume_token=b"t" * 16)))


class InlineDecoderTests(LinkTestMixin, SynchronousTestCase):
    """
    With the default decoder (decoding at once), many encoded chunks in one
    read go through without recursion.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        protocol.dataReceived(data)

    def test_many(self) -> None:
        pieces = [_content(100 + i) for i in range(3000)]
        whole = b"".join(pieces)
        self.deliver(
            hello(), imageOpen(1, "a.img"), *[packed(1, p, (ZSTD, LZ4)[i % 2]) for i, p in enumerate(pieces)],
            imageClose(1, whole),
        )
        self.assertEqual(self.kinds(), ["accept", "ack"])
        self.assertTrue(self.session.images[("", "a.img")].data.tobytes() == whole)


class RawUnchangedTests(SynchronousTestCase):
    """
    C{RAW} is what an older proxy sends: chunks without encoding or size.
    """

    def test_raw(self) -> None:
        self.assertEqual(link_pb2.Chunk(image=1, length=3).encoding, RAW)
