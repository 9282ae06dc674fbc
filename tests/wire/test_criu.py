"""
Tests for L{imgrelay.wire.criu} and the messages of
L{imgrelay.wire.pb.criu_pb2}, against the hex vectors of CRIU's local protocols
(C{../shared/spec/criu-wire.md}, sections 1 and 2), copied here verbatim.
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf.message import Message
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.wire.criu import (
    ENOENT,
    FD_BYTE,
    O_APPEND,
    O_RDONLY,
    O_WRONLY,
    PARENT,
    PREFIX,
    decodeLocalImageHeader,
    decodeSnapshotIdRecord,
    frame,
    localReply,
    snapshotListReply,
    streamCaptureFramer,
    streamReply,
    streamServeFramer,
)
from imgrelay.wire.framing import (
    DEFAULT_MAX_HEADER,
    Framer,
    HeaderReceived,
    HeaderTooLarge,
    MalformedHeader,
    PayloadChunk,
    PayloadDone,
)
from imgrelay.wire.pb import criu_pb2


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


# Section 1: the stream protocol.
REQUEST_INVENTORY = _hex("0f 00 00 00 0a 0d 69 6e 76 65 6e 74 6f 72 79 2e 69 6d 67")
REPLY_EXISTS = _hex("02 00 00 00 08 01")
REPLY_MISSING = _hex("02 00 00 00 08 00")

# Section 2: the remote-images protocol.
WRITE_HEADER = _hex("18 00 00 00 0a 0b 70 61 67 65 73 2d 31 2e 69 6d 67 12 07 2f 6d 69 67 2f 64 31 18 01")
READ_HEADER = _hex("18 00 00 00 0a 0b 70 61 67 65 73 2d 31 2e 69 6d 67 12 07 2f 6d 69 67 2f 64 31 18 00")
FINISH_DUMP = _hex("06 00 00 00 0a 00 12 00 18 01")
FINISH_RESTORE = _hex("06 00 00 00 0a 00 12 00 18 00")
PARENT_APPEND = _hex("0d 00 00 00 0a 06 70 61 72 65 6e 74 12 00 18 80 08")
PARENT_READ = _hex("0c 00 00 00 0a 06 70 61 72 65 6e 74 12 00 18 00")
SNAPSHOT_RECORD = _hex("09 00 00 00 0a 07 2f 6d 69 67 2f 64 31")
REPLY_OK = _hex("02 00 00 00 08 00")
REPLY_ENOENT = _hex("02 00 00 00 08 02")
REMOTE_HEADER = _hex(
    "1c 00 00 00 0a 0b 70 61 67 65 73 2d 31 2e 69 6d 67 12 07 2f 6d 69 67 2f 64 31 18 01 20 80 a0 07"
)

#: Every vector, with the message type and the fields it holds.
VECTORS: list[tuple[str, bytes, Any, dict[str, object]]] = [
    ("request inventory.img", REQUEST_INVENTORY, criu_pb2.StreamRequest, {"filename": "inventory.img"}),
    ("reply exists=true", REPLY_EXISTS, criu_pb2.StreamReply, {"exists": True}),
    ("reply exists=false", REPLY_MISSING, criu_pb2.StreamReply, {"exists": False}),
    (
        "write header",
        WRITE_HEADER,
        criu_pb2.LocalImageHeader,
        {"name": "pages-1.img", "snapshot_id": "/mig/d1", "open_mode": 1},
    ),
    (
        "read header",
        READ_HEADER,
        criu_pb2.LocalImageHeader,
        {"name": "pages-1.img", "snapshot_id": "/mig/d1", "open_mode": 0},
    ),
    ("finish (dump)", FINISH_DUMP, criu_pb2.LocalImageHeader, {"name": "", "snapshot_id": "", "open_mode": 1}),
    ("finish (restore)", FINISH_RESTORE, criu_pb2.LocalImageHeader, {"name": "", "snapshot_id": "", "open_mode": 0}),
    (
        "parent append",
        PARENT_APPEND,
        criu_pb2.LocalImageHeader,
        {"name": "parent", "snapshot_id": "", "open_mode": 1024},
    ),
    ("parent read", PARENT_READ, criu_pb2.LocalImageHeader, {"name": "parent", "snapshot_id": "", "open_mode": 0}),
    ("snapshot id record", SNAPSHOT_RECORD, criu_pb2.SnapshotIdRecord, {"snapshot_id": "/mig/d1"}),
    ("reply ok", REPLY_OK, criu_pb2.LocalReply, {"error": 0}),
    ("reply ENOENT", REPLY_ENOENT, criu_pb2.LocalReply, {"error": 2}),
    (
        "remote header",
        REMOTE_HEADER,
        criu_pb2.RemoteImageHeader,
        {"name": "pages-1.img", "snapshot_id": "/mig/d1", "open_mode": 1, "size": 118784},
    ),
]


def _request(name: str) -> bytes:
    return frame(criu_pb2.StreamRequest(filename=name))


class ConstantsTests(SynchronousTestCase):
    """
    CRIU's framing parameters.
    """

    def test_values(self) -> None:
        """
        CRIU's prefix is a little-endian u32; a passed fd rides on one 0x00
        byte.
        """
        self.assertEqual(PREFIX, "<I")
        self.assertEqual(FD_BYTE, b"\x00")

    def test_remoteValues(self) -> None:
        """
        The remote protocol's open modes and ENOENT are Linux's values, and
        its snapshot list is the image C{parent}.
        """
        self.assertEqual((O_RDONLY, O_WRONLY, O_APPEND, ENOENT), (0, 1, 1024, 2))
        self.assertEqual(PARENT, "parent")


class VectorTests(SynchronousTestCase):
    """
    Every message encodes to the spec's bytes and those bytes decode to the
    spec's fields.
    """

    def test_encode(self) -> None:
        """
        L{frame} of each message, every required field set, equals its
        vector byte for byte.
        """
        for label, vector, cls, fields in VECTORS:
            self.assertEqual(frame(cls(**fields)).hex(" "), vector.hex(" "), label)

    def test_decode(self) -> None:
        """
        Each vector's prefix is the little-endian length of its body, and the
        body decodes to the spec's fields, each present (even empty or
        false ones).
        """
        for label, vector, cls, fields in VECTORS:
            (length,) = struct.unpack("<I", vector[:4])
            self.assertEqual(length, len(vector) - 4, label)
            message = cls.FromString(vector[4:])
            self.assertTrue(message.IsInitialized(), label)
            for field, value in fields.items():
                self.assertTrue(message.HasField(field), (label, field))
                self.assertEqual(getattr(message, field), value, (label, field))
            self.assertEqual(len(message.ListFields()), len(fields), label)

    def test_decodeWithFramer(self) -> None:
        """
        A framer with CRIU's prefix reads each vector as one complete header,
        whole or a byte at a time.
        """
        for label, vector, cls, fields in VECTORS:

            def decode(data: bytes, cls: Any = cls) -> tuple[Message, int]:
                return cls.FromString(data), 0

            for pieces in [[vector], [vector[i : i + 1] for i in range(len(vector))]]:
                framer: Framer[Message] = Framer(decode, PREFIX)
                events = [e for piece in pieces for e in framer.feed(piece)]
                self.assertEqual(events, [HeaderReceived(cls(**fields))], label)
                self.assertTrue(framer.atBoundary, label)

    def test_snapshotListReply(self) -> None:
        """
        A snapshot list read is answered by a reply then records, framed back
        to back.
        """
        records = [criu_pb2.SnapshotIdRecord(snapshot_id=s) for s in ["/mig/d1", "/mig/d2"]]
        data = frame(criu_pb2.LocalReply(error=0)) + b"".join(frame(r) for r in records)
        self.assertEqual(data[: len(REPLY_OK) + len(SNAPSHOT_RECORD)], REPLY_OK + SNAPSHOT_RECORD)
        self.assertEqual(data[len(REPLY_OK) + len(SNAPSHOT_RECORD) :], SNAPSHOT_RECORD[:-1] + b"2")


class RemoteDecoderTests(SynchronousTestCase):
    """
    L{decodeLocalImageHeader} and L{decodeSnapshotIdRecord} read the remote
    protocol's header and snapshot list records in a L{Framer}.
    """

    def test_header(self) -> None:
        """
        The write header vector, whole or a byte at a time, is one header
        whose payload the consumer decides.
        """
        for pieces in [[WRITE_HEADER], [WRITE_HEADER[i : i + 1] for i in range(len(WRITE_HEADER))]]:
            framer = Framer(decodeLocalImageHeader, PREFIX)
            events = [e for piece in pieces for e in framer.feed(piece)]
            expected = criu_pb2.LocalImageHeader(name="pages-1.img", snapshot_id="/mig/d1", open_mode=1)
            self.assertEqual(events, [HeaderReceived(expected)])
            self.assertTrue(framer.awaitingDecision)

    def test_headerNotUTF8(self) -> None:
        """
        A header whose name or snapshot id is not UTF-8 is
        L{MalformedHeader}.
        """
        for body in [b"\x0a\x02\xff\xfe\x12\x00\x18\x01", b"\x0a\x01a\x12\x02\xff\xfe\x18\x01"]:
            with self.assertRaises(MalformedHeader):
                decodeLocalImageHeader(body)

    def test_records(self) -> None:
        """
        Snapshot id records follow each other back to back, whole or a byte
        at a time.
        """
        data = SNAPSHOT_RECORD + frame(criu_pb2.SnapshotIdRecord(snapshot_id="/mig/d2"))
        for pieces in [[data], [data[i : i + 1] for i in range(len(data))]]:
            framer = Framer(decodeSnapshotIdRecord, PREFIX)
            events = [e for piece in pieces for e in framer.feed(piece)]
            self.assertEqual(
                [e.message.snapshot_id for e in events if isinstance(e, HeaderReceived)], ["/mig/d1", "/mig/d2"]
            )
            self.assertTrue(framer.atBoundary)

    def test_recordNotUTF8(self) -> None:
        """
        A record whose snapshot id is not UTF-8 is L{MalformedHeader}.
        """
        with self.assertRaises(MalformedHeader):
            decodeSnapshotIdRecord(b"\x0a\x02\xff\xfe")

    def test_garbage(self) -> None:
        """
        Bytes that are no header or record are L{MalformedHeader} in a
        framer.
        """
        for decode in [decodeLocalImageHeader, decodeSnapshotIdRecord]:
            framer: Framer[Any] = Framer(decode, PREFIX)
            with self.assertRaises(MalformedHeader):
                list(framer.feed(b"\x02\x00\x00\x00\xff\xff"))


class LocalReplyTests(SynchronousTestCase):
    """
    L{localReply} encodes the remote protocol's answer to a read.
    """

    def test_vectors(self) -> None:
        """
        Error 0 and ENOENT are the spec's reply vectors.
        """
        self.assertEqual(localReply(0), REPLY_OK)
        self.assertEqual(localReply(ENOENT), REPLY_ENOENT)

    def test_snapshotList(self) -> None:
        """
        L{snapshotListReply} answers a list with reply ok and a record per
        id, in order; an empty one with reply ok alone; none with ENOENT.
        """
        self.assertEqual(
            snapshotListReply(["/mig/d1", "/mig/d2"]), REPLY_OK + SNAPSHOT_RECORD + SNAPSHOT_RECORD[:-1] + b"2"
        )
        self.assertEqual(snapshotListReply([]), REPLY_OK)
        self.assertEqual(snapshotListReply(None), REPLY_ENOENT)


class StreamReplyTests(SynchronousTestCase):
    """
    L{streamReply} frames the answer to a restore request.
    """

    def test_exists(self) -> None:
        """
        C{streamReply(True)} is the spec's "exists=true" vector.
        """
        self.assertEqual(streamReply(True), REPLY_EXISTS)

    def test_missing(self) -> None:
        """
        C{streamReply(False)} is the spec's "exists=false" vector: the
        required bool is sent even though it is false.
        """
        self.assertEqual(streamReply(False), REPLY_MISSING)


class FrameTests(SynchronousTestCase):
    """
    L{frame} puts CRIU's little-endian prefix before a message.
    """

    def test_request(self) -> None:
        """
        A request is the spec's vector.
        """
        self.assertEqual(_request("inventory.img"), REQUEST_INVENTORY)

    def test_littleEndianLongLength(self) -> None:
        """
        A body longer than 255 bytes has its low length byte first.
        """
        framed = _request("a" * 300)
        self.assertEqual(framed[:4], b"\x2f\x01\x00\x00")
        self.assertEqual(len(framed), 4 + 0x12F)


class StreamCaptureFramerTests(SynchronousTestCase):
    """
    L{streamCaptureFramer} parses CRIU's C{--stream} dump connection: every
    request is followed by exactly one fd byte.
    """

    def test_requestThenFdByte(self) -> None:
        """
        A request gives L{HeaderReceived}, then the fd byte as a one-byte
        payload and L{PayloadDone}.
        """
        framer = streamCaptureFramer()
        events = list(framer.feed(REQUEST_INVENTORY + FD_BYTE))
        self.assertEqual(len(events), 3)
        self.assertEqual(events[0], HeaderReceived(criu_pb2.StreamRequest(filename="inventory.img")))
        chunk = events[1]
        assert isinstance(chunk, PayloadChunk)
        self.assertEqual(bytes(chunk.data), FD_BYTE)
        self.assertEqual(events[2], PayloadDone())
        self.assertTrue(framer.atBoundary)

    def test_waitsForFdByte(self) -> None:
        """
        After a request alone the framer is not at a boundary and awaits no
        decision: it expects the fd byte.
        """
        framer = streamCaptureFramer()
        events = list(framer.feed(REQUEST_INVENTORY))
        self.assertEqual(events, [HeaderReceived(criu_pb2.StreamRequest(filename="inventory.img"))])
        self.assertFalse(framer.atBoundary)
        self.assertFalse(framer.awaitingDecision)
        events = list(framer.feed(FD_BYTE))
        self.assertEqual(len(events), 2)
        self.assertTrue(framer.atBoundary)

    def test_exactlyOneByte(self) -> None:
        """
        Only one byte after each request is payload: the next bytes are the
        next request.
        """
        names = ["pages-1.img", "core-11105.img", "inventory.img"]
        stream = b"".join(_request(n) + FD_BYTE for n in names)
        for pieces in [[stream], [stream[i : i + 1] for i in range(len(stream))]]:
            framer = streamCaptureFramer()
            events = [e for piece in pieces for e in framer.feed(piece)]
            headers = [e.message.filename for e in events if isinstance(e, HeaderReceived)]
            self.assertEqual(headers, names)
            payload = [bytes(e.data) for e in events if isinstance(e, PayloadChunk)]
            self.assertEqual(payload, [FD_BYTE] * 3)
            self.assertEqual(sum(isinstance(e, PayloadDone) for e in events), 3)
            self.assertTrue(framer.atBoundary)

    def test_bigEndianRefused(self) -> None:
        """
        The prefix is read little-endian: a big-endian one announces an
        oversized header.
        """
        body = REQUEST_INVENTORY[4:]
        with self.assertRaises(HeaderTooLarge):
            list(streamCaptureFramer().feed(struct.pack("!I", len(body)) + body))

    def test_maxHeaderSize(self) -> None:
        """
        The header limit defaults to L{DEFAULT_MAX_HEADER} and can be set.
        """
        self.assertEqual(streamCaptureFramer().maxHeaderSize, DEFAULT_MAX_HEADER)
        with self.assertRaises(HeaderTooLarge):
            list(streamCaptureFramer(maxHeaderSize=14).feed(REQUEST_INVENTORY))
        self.assertEqual(len(list(streamCaptureFramer(maxHeaderSize=15).feed(REQUEST_INVENTORY))), 1)

    def test_garbage(self) -> None:
        """
        A request that is not a protobuf message is L{MalformedHeader}.
        """
        with self.assertRaises(MalformedHeader):
            list(streamCaptureFramer().feed(b"\x02\x00\x00\x00\xff\xff"))

    def test_filenameNotUTF8(self) -> None:
        """
        A request whose filename is not UTF-8 is L{MalformedHeader}.
        """
        # Regression: proto2 strings are not checked by the upb parser; for
        # invalid UTF-8 the filename came through as bytes and made
        # checkImageName raise TypeError instead of a clean refusal.
        body = b"\x0a\x02\xff\xfe"
        with self.assertRaises(MalformedHeader):
            list(streamCaptureFramer().feed(struct.pack("<I", len(body)) + body + FD_BYTE))


class StreamServeFramerTests(SynchronousTestCase):
    """
    L{streamServeFramer} parses CRIU's C{--stream} restore connection: after
    each request the consumer decides whether an fd byte follows.
    """

    def test_awaitsDecision(self) -> None:
        """
        A request gives L{HeaderReceived} and leaves the framer awaiting a
        decision.
        """
        framer = streamServeFramer()
        events = list(framer.feed(REQUEST_INVENTORY))
        self.assertEqual(events, [HeaderReceived(criu_pb2.StreamRequest(filename="inventory.img"))])
        self.assertTrue(framer.awaitingDecision)
        self.assertFalse(framer.atBoundary)

    def test_exists(self) -> None:
        """
        After C{expectPayload(1)} ("exists"), the fd byte is the payload.
        """
        framer = streamServeFramer()
        list(framer.feed(REQUEST_INVENTORY))
        framer.expectPayload(1)
        events = list(framer.feed(FD_BYTE))
        self.assertEqual(len(events), 2)
        assert isinstance(events[0], PayloadChunk)
        self.assertEqual(bytes(events[0].data), FD_BYTE)
        self.assertEqual(events[1], PayloadDone())
        self.assertTrue(framer.atBoundary)

    def test_missing(self) -> None:
        """
        After C{expectPayload(0)} ("does not exist"), the next request
        follows directly.
        """
        framer = streamServeFramer()
        list(framer.feed(REQUEST_INVENTORY))
        framer.expectPayload(0)
        self.assertTrue(framer.atBoundary)
        events = list(framer.feed(_request("memfd.img")))
        self.assertEqual(events, [HeaderReceived(criu_pb2.StreamRequest(filename="memfd.img"))])
        self.assertTrue(framer.awaitingDecision)

    def test_decidedDuringIteration(self) -> None:
        """
        Answering while the events are iterated lets a fd byte and the next
        request in the same data be parsed at once.
        """
        framer = streamServeFramer()
        stream = REQUEST_INVENTORY + FD_BYTE + _request("pages-1.img")
        events = []
        for event in framer.feed(stream):
            events.append(event)
            if isinstance(event, HeaderReceived) and event.message.filename == "inventory.img":
                framer.expectPayload(1)
        self.assertEqual(len(events), 4)
        self.assertEqual(events[3], HeaderReceived(criu_pb2.StreamRequest(filename="pages-1.img")))
        self.assertTrue(framer.awaitingDecision)
