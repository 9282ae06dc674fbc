"""
Tests for L{imgrelay.wire.link}: the encoding and framers of imgrelay's link
protocol (C{docs/link-protocol.md}).
"""

from __future__ import annotations

import random
import struct
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.wire.framing import (
    DEFAULT_MAX_HEADER,
    Framer,
    HeaderReceived,
    HeaderTooLarge,
    MalformedHeader,
    PayloadChunk,
    PayloadDone,
)
from imgrelay.wire.link import (
    MAX_CHUNK,
    PREFIX,
    VERSION,
    CacheMessage,
    ProxyMessage,
    cacheMessageFramer,
    chunkHeader,
    frame,
    proxyMessageFramer,
)
from imgrelay.wire.pb import link_pb2

#: One message of each kind the proxy sends.
PROXY_MESSAGES = [
    ProxyMessage(hello=link_pb2.Hello(version=1, session="host:/run/dump")),
    ProxyMessage(open=link_pb2.ImageOpen(image=1, name="pages-1.img", snapshot_id="/mig/d1")),
    ProxyMessage(chunk=link_pb2.Chunk(image=1, length=0)),
    ProxyMessage(close=link_pb2.ImageClose(image=1, size=118784, crc32c=0xE3069283)),
    ProxyMessage(done=link_pb2.Done(images=2, bytes=120633, manifest_sha256=b"\x01" * 32)),
    ProxyMessage(abort=link_pb2.Abort(reason="hostile image name")),
    ProxyMessage(snapshot=link_pb2.SnapshotPush(snapshot_id="/mig/d1")),
    ProxyMessage(hello=link_pb2.Hello(version=2, session="web-1", resume_token=b"t" * 16, verdict=True)),
    ProxyMessage(commit=link_pb2.Commit()),
]

#: One message of each kind the cache sends.
CACHE_MESSAGES = [
    CacheMessage(accept=link_pb2.Accept()),
    CacheMessage(refuse=link_pb2.Refuse(reason="version 2 is not spoken here")),
    CacheMessage(ack=link_pb2.ImageAck(image=7)),
    CacheMessage(image_refused=link_pb2.ImageRefused(image=7, reason="crc mismatch")),
    CacheMessage(done_ok=link_pb2.DoneOk()),
    CacheMessage(failed=link_pb2.SessionFailed(reason="2 images still open")),
    CacheMessage(
        accept=link_pb2.Accept(received=1 << 40, open_images=[link_pb2.ImageProgress(image=3, bytes=12)])
    ),
    CacheMessage(progress=link_pb2.Progress(received=123456789)),
    CacheMessage(accept=link_pb2.Accept(encodings=[link_pb2.ZSTD, link_pb2.LZ4], restores=True)),
    CacheMessage(verdict=link_pb2.Verdict(restored=True, pid=4242, seconds=1.5)),
    CacheMessage(verdict=link_pb2.Verdict(restored=False, status=-9, reason="criu restore failed",
                                          log_tail="Error (criu/cr-restore.c:2324): Restoring FAILED.")),
    CacheMessage(resolved=link_pb2.Resolved(running=True, seconds=1.6)),
]


def _events(framer: Framer[Any], pieces: list[bytes]) -> list[tuple[str, object]]:
    """
    Feed C{pieces} and return the events, payload chunks joined.
    """
    out: list[tuple[str, object]] = []
    for piece in pieces:
        for event in framer.feed(piece):
            if isinstance(event, HeaderReceived):
                out.append(("header", event.message))
            elif isinstance(event, PayloadChunk):
                if out and out[-1][0] == "payload":
                    previous = out[-1][1]
                    assert isinstance(previous, bytes)
                    out[-1] = ("payload", previous + bytes(event.data))
                else:
                    out.append(("payload", bytes(event.data)))
            else:
                assert isinstance(event, PayloadDone)
                out.append(("done", None))
    return out


class ConstantsTests(SynchronousTestCase):
    """
    The link's fixed parameters.
    """

    def test_values(self) -> None:
        """
        Version 1, network byte order, chunks of at most 16 MiB.
        """
        self.assertEqual(VERSION, 1)
        self.assertEqual(PREFIX, "!I")
        self.assertEqual(MAX_CHUNK, 16 * 1024 * 1024)


class FrameTests(SynchronousTestCase):
    """
    L{frame} puts a 4-byte big-endian length before a message.
    """

    def test_knownBytes(self) -> None:
        """
        A Hello is its length as a big-endian u32, then its protobuf bytes.
        """
        message = ProxyMessage(hello=link_pb2.Hello(version=1, session="s"))
        self.assertEqual(frame(message), b"\x00\x00\x00\x07" + b"\x0a\x05\x08\x01\x12\x01s")

    def test_bigEndian(self) -> None:
        """
        A message longer than 255 bytes has the high byte of its length
        first.
        """
        message = ProxyMessage(abort=link_pb2.Abort(reason="x" * 300))
        framed = frame(message)
        self.assertEqual(framed[:4], b"\x00\x00\x01\x32")
        self.assertEqual(framed[4:], message.SerializeToString())
        self.assertEqual(len(framed), 4 + 0x132)

    def test_cacheMessage(self) -> None:
        """
        Cache messages are framed the same way; an empty kind still takes two
        bytes, so the envelope is never empty.
        """
        self.assertEqual(frame(CacheMessage(accept=link_pb2.Accept())), b"\x00\x00\x00\x02\x0a\x00")
        self.assertEqual(frame(CacheMessage(done_ok=link_pb2.DoneOk())), b"\x00\x00\x00\x02\x2a\x00")


class ChunkHeaderTests(SynchronousTestCase):
    """
    L{chunkHeader} announces raw bytes of an image.
    """

    def test_knownBytes(self) -> None:
        """
        C{chunkHeader(5, 1000)} is the framed C{ProxyMessage(chunk=...)}.
        """
        self.assertEqual(chunkHeader(5, 1000), b"\x00\x00\x00\x07\x1a\x05\x08\x05\x10\xe8\x07")
        self.assertEqual(chunkHeader(5, 1000), frame(ProxyMessage(chunk=link_pb2.Chunk(image=5, length=1000))))

    def test_roundTrip(self) -> None:
        """
        The proxy framer reads back a chunk header's image and length, then
        expects exactly that many payload bytes.
        """
        for image, length in [(0, 1), (1, 1000), (2**32 - 1, MAX_CHUNK), (7, 1 << 20)]:
            framer = proxyMessageFramer()
            events = list(framer.feed(chunkHeader(image, length)))
            self.assertEqual(len(events), 1)
            event = events[0]
            assert isinstance(event, HeaderReceived)
            self.assertEqual(event.message.WhichOneof("kind"), "chunk")
            self.assertEqual((event.message.chunk.image, event.message.chunk.length), (image, length))
            self.assertFalse(framer.atBoundary)
            self.assertFalse(framer.awaitingDecision)

    def test_emptyChunk(self) -> None:
        """
        A chunk of length 0 carries no payload: the next header follows at
        once.
        """
        stream = chunkHeader(3, 0) + chunkHeader(3, 1) + b"z"
        events = _events(proxyMessageFramer(), [stream])
        self.assertEqual(
            events,
            [
                ("header", ProxyMessage(chunk=link_pb2.Chunk(image=3, length=0))),
                ("header", ProxyMessage(chunk=link_pb2.Chunk(image=3, length=1))),
                ("payload", b"z"),
                ("done", None),
            ],
        )


class ProxyMessageFramerTests(SynchronousTestCase):
    """
    L{proxyMessageFramer} parses what the cache receives.
    """

    def test_everyKind(self) -> None:
        """
        Each kind of proxy message decodes to an equal message, with no
        payload except a chunk's, fed whole or a byte at a time.
        """
        kinds = set()
        for message in PROXY_MESSAGES:
            kinds.add(message.WhichOneof("kind"))
            data = frame(message)
            for pieces in [[data], [data[i : i + 1] for i in range(len(data))]]:
                framer = proxyMessageFramer()
                self.assertEqual(_events(framer, pieces), [("header", message)])
                self.assertTrue(framer.atBoundary)
        self.assertEqual(kinds, {f.name for f in ProxyMessage.DESCRIPTOR.oneofs_by_name["kind"].fields})

    def test_chunkPayload(self) -> None:
        """
        A chunk header is followed by its payload, and the next message after
        it; fed in any pieces the events are the same.
        """
        payload = random.Random(0).randbytes(5000)
        stream = (
            frame(PROXY_MESSAGES[1])
            + chunkHeader(1, len(payload))
            + payload
            + frame(PROXY_MESSAGES[3])
        )
        expected = [
            ("header", PROXY_MESSAGES[1]),
            ("header", ProxyMessage(chunk=link_pb2.Chunk(image=1, length=5000))),
            ("payload", payload),
            ("done", None),
            ("header", PROXY_MESSAGES[3]),
        ]
        self.assertEqual(_events(proxyMessageFramer(), [stream]), expected)
        self.assertEqual(_events(proxyMessageFramer(), [stream[i : i + 1] for i in range(len(stream))]), expected)
        rng = random.Random(1)
        cuts = sorted(rng.randrange(len(stream)) for _ in range(10))
        bounds = [0, *cuts, len(stream)]
        pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
        self.assertEqual(_events(proxyMessageFramer(), pieces), expected)

    def test_chunkMaxAccepted(self) -> None:
        """
        A chunk of exactly L{MAX_CHUNK} bytes is accepted.
        """
        framer = proxyMessageFramer()
        self.assertEqual(len(list(framer.feed(chunkHeader(1, MAX_CHUNK)))), 1)

    def test_chunkTooLong(self) -> None:
        """
        A chunk announcing more than L{MAX_CHUNK} bytes is L{MalformedHeader}.
        """
        for length in [MAX_CHUNK + 1, 2**32 - 1]:
            framer = proxyMessageFramer()
            with self.assertRaises(MalformedHeader) as raised:
                list(framer.feed(chunkHeader(1, length)))
            self.assertIn(str(length), str(raised.exception))

    def test_emptyEnvelope(self) -> None:
        """
        An envelope with nothing set (an empty body) is L{MalformedHeader}
        naming it unknown.
        """
        with self.assertRaises(MalformedHeader) as raised:
            list(proxyMessageFramer().feed(b"\x00\x00\x00\x00"))
        self.assertIn("unknown", str(raised.exception))

    def test_unknownField(self) -> None:
        """
        An envelope holding only a field number this version does not know
        (a kind from a later version) is L{MalformedHeader}.
        """
        for body in [b"\x78\x01", b"\x7a\x00", b"\x7a\x02\x08\x01"]:
            with self.assertRaises(MalformedHeader) as raised:
                list(proxyMessageFramer().feed(struct.pack("!I", len(body)) + body))
            self.assertIn("unknown", str(raised.exception))

    def test_garbage(self) -> None:
        """
        Bytes that are not a protobuf message are L{MalformedHeader}.
        """
        for body in [b"\xff\xff\xff\xff", b"\x0a\x10\x08", b"\x07", b"\x1a\x05\x08"]:
            with self.assertRaises(MalformedHeader):
                list(proxyMessageFramer().feed(struct.pack("!I", len(body)) + body))

    def test_badUTF8(self) -> None:
        """
        A string field that is not UTF-8 is L{MalformedHeader}.
        """
        body = b"\x12\x04\x12\x02\xff\xfe"  # open { name: b"\xff\xfe" }
        with self.assertRaises(MalformedHeader):
            list(proxyMessageFramer().feed(struct.pack("!I", len(body)) + body))

    def test_headerTooLarge(self) -> None:
        """
        A header over the limit (64 KiB by default) is refused from its
        prefix alone.
        """
        framer = proxyMessageFramer()
        self.assertEqual(framer.maxHeaderSize, DEFAULT_MAX_HEADER)
        with self.assertRaises(HeaderTooLarge):
            list(framer.feed(struct.pack("!I", DEFAULT_MAX_HEADER + 1)))
        framer = proxyMessageFramer(maxHeaderSize=10)
        self.assertEqual(framer.maxHeaderSize, 10)
        with self.assertRaises(HeaderTooLarge):
            list(framer.feed(frame(PROXY_MESSAGES[0])[:4]))

    def test_littleEndianRefused(self) -> None:
        """
        The link reads its prefix big-endian: a little-endian one is refused.
        """
        body = PROXY_MESSAGES[0].SerializeToString()
        with self.assertRaises(HeaderTooLarge):
            list(proxyMessageFramer().feed(struct.pack("<I", len(body)) + body))


class CacheMessageFramerTests(SynchronousTestCase):
    """
    L{cacheMessageFramer} parses what the proxy receives.
    """

    def test_everyKind(self) -> None:
        """
        Each kind of cache message decodes to an equal message with no
        payload, fed whole or a byte at a time.
        """
        kinds = set()
        for message in CACHE_MESSAGES:
            kinds.add(message.WhichOneof("kind"))
            data = frame(message)
            for pieces in [[data], [data[i : i + 1] for i in range(len(data))]]:
                framer = cacheMessageFramer()
                self.assertEqual(_events(framer, pieces), [("header", message)])
                self.assertTrue(framer.atBoundary)
        self.assertEqual(kinds, {f.name for f in CacheMessage.DESCRIPTOR.oneofs_by_name["kind"].fields})

    def test_backToBack(self) -> None:
        """
        Several cache messages in one piece all decode, in order.
        """
        stream = b"".join(frame(m) for m in CACHE_MESSAGES)
        self.assertEqual(_events(cacheMessageFramer(), [stream]), [("header", m) for m in CACHE_MESSAGES])

    def test_emptyOrUnknown(self) -> None:
        """
        An empty envelope or one with an unknown field is L{MalformedHeader}
        naming it unknown.
        """
        for body in [b"", b"\x38\x01"]:
            with self.assertRaises(MalformedHeader) as raised:
                list(cacheMessageFramer().feed(struct.pack("!I", len(body)) + body))
            self.assertIn("unknown", str(raised.exception))

    def test_garbage(self) -> None:
        """
        Bytes that are not a protobuf message are L{MalformedHeader}.
        """
        body = b"\xff\xff\xff\xff"
        with self.assertRaises(MalformedHeader):
            list(cacheMessageFramer().feed(struct.pack("!I", len(body)) + body))

    def test_maxHeaderSize(self) -> None:
        """
        The header limit defaults to 64 KiB and can be set.
        """
        self.assertEqual(cacheMessageFramer().maxHeaderSize, DEFAULT_MAX_HEADER)
        framer = cacheMessageFramer(maxHeaderSize=3)
        with self.assertRaises(HeaderTooLarge):
            list(framer.feed(frame(CACHE_MESSAGES[1])))
