"""
Tests for L{imgrelay.wire.framing}: the sans-IO length-prefix framer.

Every stream is fed all at once, one byte at a time and in random splits, and
must give the same events each way (adjacent payload chunks are joined before
comparing, since how a payload is cut depends on how its bytes arrived).
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Union

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.wire.framing import (
    DEFAULT_MAX_HEADER,
    Framer,
    FramingError,
    HeaderReceived,
    HeaderTooLarge,
    MalformedHeader,
    PayloadChunk,
    PayloadDone,
    encodeHeader,
)
from imgrelay.wire.pb.link_pb2 import Chunk

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object

#: Property tests: modest counts so the module runs in seconds; no example
#: database, so the tests write nothing to disk.
_PROPERTY = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

#: A normalized event: ("header", message), ("payload", joined bytes) or
#: ("done", None).
Normal = tuple[str, object]

#: Picks the payload length of an undecided header.
Decide = Callable[[Chunk], int]


def _decodeChunk(data: bytes) -> tuple[Chunk, Optional[int]]:
    """
    A decoder whose header is a link C{Chunk}: its C{length} is the payload's.
    """
    message = Chunk.FromString(data)
    return message, message.length


def _decodeLater(data: bytes) -> tuple[Chunk, Optional[int]]:
    """
    A decoder that leaves every payload length to the consumer.
    """
    return Chunk.FromString(data), None


def _decodeOddLater(data: bytes) -> tuple[Chunk, Optional[int]]:
    """
    A decoder that leaves the payload length of odd images to the consumer.
    """
    message = Chunk.FromString(data)
    return message, (None if message.image % 2 else message.length)


def _byLength(message: Chunk) -> int:
    return message.length


def _frame(image: int, payload: bytes, prefix: str = "!I") -> bytes:
    """
    A C{Chunk} header announcing C{payload}, then C{payload}.
    """
    return encodeHeader(Chunk(image=image, length=len(payload)), prefix) + payload


def _prefixed(body: bytes, prefix: str) -> bytes:
    return struct.pack(prefix, len(body)) + body


def _randomSplit(data: bytes, rng: random.Random) -> list[bytes]:
    """
    Cut C{data} at random points (empty pieces included).
    """
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


class _Recorder:
    """
    Feed pieces to a framer and record its events, normalized.

    @ivar early: Whether an undecided header is decided while the events are
        being iterated (right after L{HeaderReceived}), or only after the
        C{feed} that produced it, followed by C{feed(b"")}.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        framer: Framer[Chunk],
        decide: Decide = _byLength,
        early: Union[bool, Callable[[Chunk], bool]] = True,
    ) -> None:
        self.case = case
        self.framer = framer
        self.decide = decide
        self.early = early
        self.events: list[Normal] = []
        self._last: Optional[Chunk] = None

    def _checkBound(self) -> None:
        if not self.framer.awaitingDecision:
            self.case.assertLessEqual(self.framer.buffered, self.framer.maxHeaderSize + 4)

    def _isEarly(self, message: Chunk) -> bool:
        return self.early(message) if callable(self.early) else self.early

    def _consume(self, events: Iterator[object]) -> None:
        for event in events:
            if isinstance(event, HeaderReceived):
                self.events.append(("header", event.message))
                self._last = event.message
                if self.framer.awaitingDecision and self._isEarly(event.message):
                    self.framer.expectPayload(self.decide(event.message))
            elif isinstance(event, PayloadChunk):
                self.case.assertIsInstance(event.data, memoryview)
                self.case.assertGreater(len(event.data), 0)
                data = bytes(event.data)
                if self.events and self.events[-1][0] == "payload":
                    previous = self.events[-1][1]
                    assert isinstance(previous, bytes)
                    self.events[-1] = ("payload", previous + data)
                else:
                    self.events.append(("payload", data))
            elif isinstance(event, PayloadDone):
                self.events.append(("done", None))
            else:
                self.case.fail(f"unexpected event {event!r}")
            self._checkBound()

    def feed(self, data: bytes) -> None:
        self._consume(self.framer.feed(data))
        self._checkBound()
        while self.framer.awaitingDecision and self._last is not None and not self._isEarly(self._last):
            self.framer.expectPayload(self.decide(self._last))
            self._consume(self.framer.feed(b""))
            self._checkBound()

    def feedAll(self, pieces: Iterable[bytes]) -> list[Normal]:
        for piece in pieces:
            self.feed(piece)
        return self.events


def _header(image: int = 0, length: int = 0) -> Normal:
    return ("header", Chunk(image=image, length=length))


class EncodeHeaderTests(SynchronousTestCase):
    """
    L{encodeHeader} puts a length prefix of the given format before a message.
    """

    def test_networkOrderByDefault(self) -> None:
        """
        Without a prefix format the length is a big-endian u32.
        """
        self.assertEqual(
            encodeHeader(Chunk(image=1, length=2)),
            b"\x00\x00\x00\x04\x08\x01\x10\x02",
        )

    def test_littleEndian(self) -> None:
        """
        With C{"<I"} the length is a little-endian u32.
        """
        self.assertEqual(
            encodeHeader(Chunk(image=1, length=2), "<I"),
            b"\x04\x00\x00\x00\x08\x01\x10\x02",
        )

    def test_longerLength(self) -> None:
        """
        A length over 255 puts its bytes in the order the format says.
        """
        message = Chunk(image=(1 << 32) - 1, length=(1 << 32) - 1)
        body = message.SerializeToString()
        self.assertEqual(len(body), 12)
        self.assertEqual(encodeHeader(message, "!I"), b"\x00\x00\x00\x0c" + body)
        self.assertEqual(encodeHeader(message, "<I"), b"\x0c\x00\x00\x00" + body)

    def test_emptyMessage(self) -> None:
        """
        A message that serializes to nothing is a zero length and no body.
        """
        self.assertEqual(encodeHeader(Chunk()), b"\x00\x00\x00\x00")


class _FramerTestsMixin(_Base):
    """
    Framer behaviour that holds for either prefix format.

    @ivar prefix: The C{struct} format under test.
    """

    prefix: str

    def framer(
        self,
        decode: Callable[[bytes], tuple[Chunk, Optional[int]]] = _decodeChunk,
        maxHeaderSize: int = DEFAULT_MAX_HEADER,
    ) -> Framer[Chunk]:
        return Framer(decode, self.prefix, maxHeaderSize)

    def frame(self, image: int, payload: bytes) -> bytes:
        return _frame(image, payload, self.prefix)

    def assertSameEvents(
        self,
        stream: bytes,
        decode: Callable[[bytes], tuple[Chunk, Optional[int]]] = _decodeChunk,
        early: bool = True,
        bytewise: bool = True,
    ) -> list[Normal]:
        """
        Feed C{stream} all at once, one byte at a time and in random splits;
        assert every way gives the same events and ends between messages.

        @return: The events.
        """
        first = _Recorder(self, self.framer(decode), early=early)
        whole = first.feedAll([stream])
        self.assertTrue(first.framer.atBoundary)
        ways = []
        if bytewise:
            ways.append(_bytewise(stream))
        for seed in range(5):
            ways.append(_randomSplit(stream, random.Random(seed)))
        for pieces in ways:
            recorder = _Recorder(self, self.framer(decode), early=early)
            self.assertEqual(recorder.feedAll(pieces), whole)
            self.assertTrue(recorder.framer.atBoundary)
        return whole

    def test_headerAndPayload(self) -> None:
        """
        A header announcing a payload gives L{HeaderReceived}, the payload's
        bytes and L{PayloadDone}.
        """
        events = self.assertSameEvents(self.frame(7, b"hello"))
        self.assertEqual(events, [_header(7, 5), ("payload", b"hello"), ("done", None)])

    def test_prefixFormat(self) -> None:
        """
        The length prefix is read in the framer's own format.
        """
        body = Chunk(image=3).SerializeToString()
        self.assertEqual(self.frame(3, b""), struct.pack(self.prefix, 2) + body)
        events = self.assertSameEvents(_prefixed(body, self.prefix))
        self.assertEqual(events, [_header(3)])

    def test_otherByteOrderRefused(self) -> None:
        """
        A prefix written in the other byte order announces a length 2**24
        times larger, which the framer refuses.
        """
        other = "<I" if self.prefix == "!I" else "!I"
        framer = self.framer()
        with self.assertRaises(HeaderTooLarge):
            list(framer.feed(_frame(3, b"", other)))

    def test_zeroLengthHeader(self) -> None:
        """
        A zero length prefix is a complete, empty header: the decoder gets
        C{b""} as soon as the four prefix bytes are in.
        """
        seen: list[bytes] = []

        def decode(data: bytes) -> tuple[Chunk, Optional[int]]:
            seen.append(data)
            return _decodeChunk(data)

        framer = self.framer(decode)
        self.assertEqual(list(framer.feed(b"\x00\x00\x00")), [])
        self.assertEqual(list(framer.feed(b"\x00")), [HeaderReceived(Chunk())])
        self.assertEqual(seen, [b""])
        self.assertTrue(framer.atBoundary)
        events = self.assertSameEvents(b"\x00\x00\x00\x00" * 3)
        self.assertEqual(events, [_header()] * 3)

    def test_payloadLengthZero(self) -> None:
        """
        A header announcing no payload gives only L{HeaderReceived}: no
        chunk and no L{PayloadDone}; the next header follows directly.
        """
        stream = self.frame(1, b"") + self.frame(2, b"x")
        events = self.assertSameEvents(stream)
        self.assertEqual(events, [_header(1), _header(2, 1), ("payload", b"x"), ("done", None)])

    def test_payloadLengthOne(self) -> None:
        """
        A one-byte payload (what an fd byte is) is one chunk then done.
        """
        framer = self.framer()
        events = list(framer.feed(self.frame(1, b"\x00")))
        self.assertEqual(len(events), 3)
        self.assertEqual(events[0], HeaderReceived(Chunk(image=1, length=1)))
        self.assertIsInstance(events[1], PayloadChunk)
        self.assertEqual(bytes(events[1].data), b"\x00")  # type: ignore[union-attr]
        self.assertEqual(events[2], PayloadDone())
        self.assertSameEvents(self.frame(1, b"\x00") * 3)

    def test_payloadLarge(self) -> None:
        """
        A payload larger than the largest header is passed through, and
        never buffered, whatever pieces it comes in.
        """
        payload = random.Random(1).randbytes(70_000)
        stream = self.frame(9, payload) + self.frame(10, b"tail")
        events = self.assertSameEvents(stream)
        self.assertEqual(
            events,
            [_header(9, 70_000), ("payload", payload), ("done", None), _header(10, 4), ("payload", b"tail"), ("done", None)],
        )

    def test_payloadVeryLarge(self) -> None:
        """
        A 16 MiB payload fed all at once comes out as one chunk.
        """
        payload = b"\xab" * (16 << 20)
        framer = self.framer()
        events = list(framer.feed(self.frame(1, payload)))
        self.assertEqual(len(events), 3)
        chunk = events[1]
        assert isinstance(chunk, PayloadChunk)
        self.assertEqual(len(chunk.data), 16 << 20)
        self.assertEqual(framer.buffered, 0)

    def test_payloadSpansFeeds(self) -> None:
        """
        While a payload is outstanding nothing is buffered and the framer is
        not at a boundary.
        """
        framer = self.framer()
        self.assertEqual(len(list(framer.feed(self.frame(1, b"abcdef")[:-3]))), 2)
        self.assertEqual(framer.buffered, 0)
        self.assertFalse(framer.atBoundary)
        self.assertEqual(len(list(framer.feed(b"def"))), 2)
        self.assertTrue(framer.atBoundary)

    def test_manyFrames(self) -> None:
        """
        Back-to-back frames of assorted sizes decode in order.
        """
        payloads = [b"", b"a", b"bc", b"", b"\x00" * 300, b"z"]
        stream = b"".join(self.frame(i, p) for i, p in enumerate(payloads))
        expected: list[Normal] = []
        for i, p in enumerate(payloads):
            expected.append(_header(i, len(p)))
            if p:
                expected += [("payload", p), ("done", None)]
        self.assertEqual(self.assertSameEvents(stream), expected)

    def test_bufferedAndAtBoundary(self) -> None:
        """
        C{buffered} counts the bytes of a partial prefix or header;
        C{atBoundary} is true only between messages.
        """
        framer = self.framer()
        self.assertTrue(framer.atBoundary)
        self.assertEqual(framer.buffered, 0)
        stream = self.frame(5, b"xy")
        list(framer.feed(stream[:2]))
        self.assertEqual(framer.buffered, 2)
        self.assertFalse(framer.atBoundary)
        list(framer.feed(stream[2:5]))
        # The prefix is consumed; one header byte is held.
        self.assertEqual(framer.buffered, 1)
        self.assertFalse(framer.atBoundary)
        list(framer.feed(stream[5:-1]))
        self.assertEqual(framer.buffered, 0)
        self.assertFalse(framer.atBoundary)
        list(framer.feed(stream[-1:]))
        self.assertTrue(framer.atBoundary)

    def test_maxHeaderSizeAccepted(self) -> None:
        """
        A header of exactly C{maxHeaderSize} bytes is accepted.
        """
        body = Chunk(image=300).SerializeToString()
        framer = self.framer(maxHeaderSize=len(body))
        self.assertEqual(framer.maxHeaderSize, 3)
        self.assertEqual(list(framer.feed(_prefixed(body, self.prefix))), [HeaderReceived(Chunk(image=300))])

    def test_tooLargeBeforeBuffering(self) -> None:
        """
        A prefix announcing C{maxHeaderSize + 1} bytes raises
        L{HeaderTooLarge} as soon as its four bytes are in, with nothing of
        the header fed.
        """
        prefix = struct.pack(self.prefix, 11)
        framer = self.framer(maxHeaderSize=10)
        for byte in _bytewise(prefix[:3]):
            self.assertEqual(list(framer.feed(byte)), [])
        with self.assertRaises(HeaderTooLarge) as raised:
            list(framer.feed(prefix[3:]))
        self.assertIn("11", str(raised.exception))
        self.assertEqual(framer.buffered, 0)

        framer = self.framer(maxHeaderSize=10)
        with self.assertRaises(HeaderTooLarge):
            list(framer.feed(prefix))

    def test_tooLargeDefault(self) -> None:
        """
        The default limit is L{DEFAULT_MAX_HEADER}; the largest u32 is refused.
        """
        framer = self.framer()
        self.assertEqual(framer.maxHeaderSize, DEFAULT_MAX_HEADER)
        with self.assertRaises(HeaderTooLarge):
            list(framer.feed(struct.pack(self.prefix, DEFAULT_MAX_HEADER + 1)))
        framer = self.framer()
        with self.assertRaises(HeaderTooLarge):
            list(framer.feed(b"\xff\xff\xff\xff"))

    def test_headerExactlyDefaultMax(self) -> None:
        """
        A prefix of exactly L{DEFAULT_MAX_HEADER} is not refused: the framer
        waits for the header.
        """
        framer = self.framer()
        self.assertEqual(list(framer.feed(struct.pack(self.prefix, DEFAULT_MAX_HEADER))), [])
        self.assertEqual(framer.buffered, 0)
        self.assertFalse(framer.atBoundary)

    def test_decoderExceptionIsMalformed(self) -> None:
        """
        Any exception from the decoder becomes L{MalformedHeader} carrying its
        message, and the framer buffers nothing more.
        """

        def decode(data: bytes) -> tuple[Chunk, Optional[int]]:
            raise ValueError("no good: " + data.decode())

        framer = self.framer(decode)
        with self.assertRaises(MalformedHeader) as raised:
            list(framer.feed(_prefixed(b"hdr", self.prefix) + b"more bytes"))
        self.assertIn("no good: hdr", str(raised.exception))
        self.assertEqual(framer.buffered, 0)
        self.assertFalse(framer.atBoundary)

    def test_protobufGarbageIsMalformed(self) -> None:
        """
        A header that is not a valid protobuf message is L{MalformedHeader}.
        """
        framer = self.framer()
        with self.assertRaises(MalformedHeader):
            list(framer.feed(_prefixed(b"\xff\xff\xff", self.prefix)))

    def test_decoderFramingErrorKept(self) -> None:
        """
        A L{FramingError} raised by the decoder propagates as is.
        """
        error = HeaderTooLarge("decoder says so")

        def decode(data: bytes) -> tuple[Chunk, Optional[int]]:
            raise error

        framer = self.framer(decode)
        with self.assertRaises(HeaderTooLarge) as raised:
            list(framer.feed(_prefixed(b"", self.prefix)))
        self.assertIs(raised.exception, error)

    def test_negativePayloadIsMalformed(self) -> None:
        """
        A decoder answering a negative payload length is L{MalformedHeader}.
        """
        framer = self.framer(lambda data: (Chunk(), -1))
        with self.assertRaises(MalformedHeader):
            list(framer.feed(_prefixed(b"", self.prefix)))
        with self.assertRaises(FramingError):
            list(framer.feed(b""))

    def test_feedAfterFailure(self) -> None:
        """
        After any framing error every later C{feed}, even of C{b""}, raises
        L{FramingError}.
        """

        def decode(data: bytes) -> tuple[Chunk, Optional[int]]:
            raise KeyError(data)

        for framer, stream in [
            (self.framer(maxHeaderSize=1), struct.pack(self.prefix, 2)),
            (self.framer(decode), _prefixed(b"x", self.prefix)),
        ]:
            with self.assertRaises(FramingError):
                list(framer.feed(stream))
            with self.assertRaises(FramingError) as raised:
                list(framer.feed(b""))
            self.assertIs(type(raised.exception), FramingError)
            with self.assertRaises(FramingError):
                list(framer.feed(self.frame(1, b"")))

    def test_eventsBeforeError(self) -> None:
        """
        Events for the messages before a bad one are produced before the
        error is raised.
        """
        framer = self.framer(maxHeaderSize=10)
        seen = []
        with self.assertRaises(HeaderTooLarge):
            for event in framer.feed(self.frame(1, b"ab") + struct.pack(self.prefix, 11)):
                seen.append(event)
        self.assertEqual(len(seen), 3)
        self.assertEqual(seen[0], HeaderReceived(Chunk(image=1, length=2)))
        self.assertEqual(seen[2], PayloadDone())


class NetworkOrderFramerTests(_FramerTestsMixin, SynchronousTestCase):
    """
    L{Framer} with imgrelay's link prefix, C{"!I"}.
    """

    prefix = "!I"

    def test_default(self) -> None:
        """
        A framer built without a prefix format reads C{"!I"}.
        """
        framer: Framer[Chunk] = Framer(_decodeChunk)
        self.assertEqual(list(framer.feed(b"\x00\x00\x00\x02\x08\x05")), [HeaderReceived(Chunk(image=5))])


class LittleEndianFramerTests(_FramerTestsMixin, SynchronousTestCase):
    """
    L{Framer} with CRIU's prefix, C{"<I"}.
    """

    prefix = "<I"


class DecisionTests(SynchronousTestCase):
    """
    A decoder answering C{None} leaves the payload length to the consumer,
    who gives it with L{Framer.expectPayload}.
    """

    def test_awaitingAfterHeader(self) -> None:
        """
        After an undecided header the framer awaits a decision and is not at
        a boundary; it produces nothing more, buffering what is fed.
        """
        framer: Framer[Chunk] = Framer(_decodeLater)
        rest = b"abc" + _frame(2, b"")
        events = list(framer.feed(_frame(1, b"") + rest))
        self.assertEqual(events, [HeaderReceived(Chunk(image=1))])
        self.assertTrue(framer.awaitingDecision)
        self.assertFalse(framer.atBoundary)
        self.assertEqual(framer.buffered, len(rest))
        self.assertEqual(list(framer.feed(b"12345")), [])
        self.assertEqual(framer.buffered, len(rest) + 5)
        self.assertTrue(framer.awaitingDecision)

    def test_notAwaitingWhenDecided(self) -> None:
        """
        A decoder that gives a length (even C{0}) leaves no decision pending.
        """
        framer: Framer[Chunk] = Framer(_decodeChunk)
        list(framer.feed(_frame(1, b"")))
        self.assertFalse(framer.awaitingDecision)
        list(framer.feed(_frame(1, b"x")[:-1]))
        self.assertFalse(framer.awaitingDecision)

    def test_decideLaterThenResume(self) -> None:
        """
        C{expectPayload(n)} then C{feed(b"")} parses what was buffered while
        the decision was pending: n payload bytes, then the next messages.
        """
        framer: Framer[Chunk] = Framer(_decodeLater)
        list(framer.feed(_frame(1, b"") + b"abc"))
        list(framer.feed(_frame(2, b"")))
        framer.expectPayload(3)
        self.assertFalse(framer.awaitingDecision)
        events = list(framer.feed(b""))
        self.assertEqual(len(events), 3)
        assert isinstance(events[0], PayloadChunk)
        self.assertEqual(bytes(events[0].data), b"abc")
        self.assertEqual(events[1:], [PayloadDone(), HeaderReceived(Chunk(image=2))])
        self.assertTrue(framer.awaitingDecision)
        self.assertEqual(framer.buffered, 0)

    def test_decideLaterWithNewData(self) -> None:
        """
        After C{expectPayload}, bytes given to the next C{feed} are parsed
        after those buffered meanwhile.
        """
        framer: Framer[Chunk] = Framer(_decodeOddLater)
        list(framer.feed(_frame(1, b"") + b"ab"))
        framer.expectPayload(4)
        recorder = _Recorder(self, framer)
        recorder.feedAll([b"cd" + _frame(2, b"ef")])
        self.assertEqual(recorder.events, [("payload", b"abcd"), ("done", None), _header(2, 2), ("payload", b"ef"), ("done", None)])
        self.assertTrue(framer.atBoundary)

    def test_decideDuringIteration(self) -> None:
        """
        C{expectPayload} called right after L{HeaderReceived}, while the
        events of the same C{feed} are still being iterated, lets the rest of
        that C{feed} be parsed at once: nothing is buffered and the payload
        chunk is a view of the fed bytes.
        """
        framer: Framer[Chunk] = Framer(_decodeLater)
        stream = _frame(1, b"") + b"\x00" + _frame(2, b"")
        events = []
        for event in framer.feed(stream):
            events.append(event)
            if isinstance(event, HeaderReceived):
                self.assertTrue(framer.awaitingDecision)
                framer.expectPayload(1 if event.message.image == 1 else 0)
        self.assertEqual(len(events), 4)
        self.assertEqual(events[0], HeaderReceived(Chunk(image=1)))
        chunk = events[1]
        assert isinstance(chunk, PayloadChunk)
        self.assertIs(chunk.data.obj, stream)
        self.assertEqual(bytes(chunk.data), b"\x00")
        self.assertEqual(events[2:], [PayloadDone(), HeaderReceived(Chunk(image=2))])
        self.assertTrue(framer.atBoundary)
        self.assertEqual(framer.buffered, 0)

    def test_decideEarlyOrLateSameEvents(self) -> None:
        """
        Deciding during iteration or after the C{feed} gives the same events,
        whatever pieces the stream comes in.
        """
        stream = b"".join(_frame(i, bytes([i]) * i) for i in range(1, 8))
        expected = _Recorder(self, Framer(_decodeChunk)).feedAll([stream])
        for early in (True, False):
            for pieces in [[stream], _bytewise(stream), _randomSplit(stream, random.Random(3))]:
                recorder = _Recorder(self, Framer(_decodeOddLater), early=early)
                self.assertEqual(recorder.feedAll(pieces), expected)
                self.assertTrue(recorder.framer.atBoundary)

    def test_decideAgainFromBuffer(self) -> None:
        """
        If what was buffered during a decision holds another undecided header,
        resuming stops there and awaits the next decision, keeping the rest.
        """
        framer: Framer[Chunk] = Framer(_decodeLater)
        list(framer.feed(_frame(1, b"") + b"a" + _frame(3, b"") + b"xyz"))
        framer.expectPayload(1)
        events = list(framer.feed(b"w"))
        self.assertEqual(len(events), 3)
        self.assertEqual(events[2], HeaderReceived(Chunk(image=3)))
        self.assertTrue(framer.awaitingDecision)
        self.assertEqual(framer.buffered, 4)
        framer.expectPayload(4)
        events = list(framer.feed(b""))
        self.assertEqual([bytes(e.data) for e in events if isinstance(e, PayloadChunk)], [b"xyzw"])
        self.assertEqual(events[-1], PayloadDone())
        self.assertTrue(framer.atBoundary)

    def test_decideZeroShortBuffer(self) -> None:
        """
        C{expectPayload(0)} with fewer bytes than a prefix buffered resumes
        parsing at the next header.
        """
        framer: Framer[Chunk] = Framer(_decodeLater)
        second = _frame(2, b"")
        list(framer.feed(_frame(1, b"") + second[:3]))
        framer.expectPayload(0)
        self.assertEqual(list(framer.feed(second[3:])), [HeaderReceived(Chunk(image=2))])

    def test_decideZeroWholeHeaderBuffered(self) -> None:
        """
        C{expectPayload(0)} with a whole next message buffered parses it on
        C{feed(b"")}.
        """
        # Regression: with more than 4 bytes buffered during the decision,
        # the framer used to resume with the whole buffer taken as a partial
        # prefix and raise struct.error. expectPayload(0) is what
        # _streamserve answers for "does not exist".
        framer: Framer[Chunk] = Framer(_decodeOddLater)
        list(framer.feed(_frame(1, b"") + _frame(2, b"")))
        self.assertEqual(framer.buffered, 6)
        framer.expectPayload(0)
        self.assertEqual(list(framer.feed(b"")), [HeaderReceived(Chunk(image=2))])
        self.assertTrue(framer.atBoundary)

    def test_decideZeroThenMoreData(self) -> None:
        """
        C{expectPayload(0)} with a partial next header buffered, then the
        rest of it fed, gives that header.
        """
        # Regression: see test_decideZeroWholeHeaderBuffered.
        framer: Framer[Chunk] = Framer(_decodeOddLater)
        second = _frame(2, b"ab")
        list(framer.feed(_frame(1, b"") + second[:5]))
        framer.expectPayload(0)
        recorder = _Recorder(self, framer)
        self.assertEqual(recorder.feedAll([second[5:]]), [_header(2, 2), ("payload", b"ab"), ("done", None)])

    def test_expectPayloadNotAwaiting(self) -> None:
        """
        L{Framer.expectPayload} raises L{RuntimeError} unless a decision is
        pending: at the start, mid-header, mid-payload, after a decided
        header, and when called twice for one header.
        """
        framer: Framer[Chunk] = Framer(_decodeOddLater)
        self.assertRaises(RuntimeError, framer.expectPayload, 0)
        list(framer.feed(b"\x00\x00"))
        self.assertRaises(RuntimeError, framer.expectPayload, 0)
        list(framer.feed(_frame(2, b"xy")[2:-1]))
        self.assertRaises(RuntimeError, framer.expectPayload, 0)
        list(framer.feed(b"y"))
        self.assertRaises(RuntimeError, framer.expectPayload, 0)
        list(framer.feed(_frame(1, b"")))
        framer.expectPayload(0)
        self.assertRaises(RuntimeError, framer.expectPayload, 0)

    def test_expectNegativePayload(self) -> None:
        """
        A negative decision is L{MalformedHeader}.
        """
        framer: Framer[Chunk] = Framer(_decodeLater)
        list(framer.feed(_frame(1, b"")))
        self.assertRaises(MalformedHeader, framer.expectPayload, -1)


class HoldTests(SynchronousTestCase):
    """
    L{Framer.hold} stops parsing between two messages; what is fed
    meanwhile is parsed after L{Framer.release}, in order.
    """

    def test_holdAfterPayload(self) -> None:
        """
        Held at the end of a payload, the rest of the same feed and later
        feeds are kept, and parsed in order once released.
        """
        framer: Framer[Chunk] = Framer(_decodeChunk)
        events = framer.feed(_frame(1, b"ab") + _frame(2, b"cd"))
        self.assertEqual(next(events), HeaderReceived(Chunk(image=1, length=2)))
        self.assertEqual(bytes(next(events).data), b"ab")  # type: ignore[union-attr]
        self.assertEqual(next(events), PayloadDone())
        framer.hold()
        self.assertTrue(framer.held)
        self.assertEqual(list(events), [])
        self.assertEqual(list(framer.feed(_frame(3, b""))), [])
        self.assertEqual(framer.payloadRemaining, 0)
        self.assertFalse(framer.atBoundary)
        self.assertEqual(framer.buffered, len(_frame(2, b"cd") + _frame(3, b"")))
        framer.release()
        recorder = _Recorder(self, framer)
        self.assertEqual(
            recorder.feedAll([b""]), [_header(2, 2), ("payload", b"cd"), ("done", None), _header(3, 0)]
        )
        self.assertTrue(framer.atBoundary)

    def test_holdAfterSkippedPayload(self) -> None:
        """
        Held after a payload the consumer received itself.
        """
        framer: Framer[Chunk] = Framer(_decodeChunk)
        list(framer.feed(_frame(1, b"ab")[:-2]))
        self.assertEqual(framer.payloadRemaining, 2)
        self.assertTrue(framer.skipPayload(2))
        framer.hold()
        self.assertEqual(list(framer.feed(_frame(2, b""))), [])
        framer.release()
        self.assertEqual(list(framer.feed(b"")), [HeaderReceived(Chunk(image=2))])

    def test_holdOnlyBetweenMessages(self) -> None:
        """
        Not inside a payload or a header; no release without a hold.
        """
        framer: Framer[Chunk] = Framer(_decodeChunk)
        list(framer.feed(_frame(1, b"ab")[:-1]))
        self.assertRaises(RuntimeError, framer.hold)
        other: Framer[Chunk] = Framer(_decodeChunk)
        list(other.feed(_frame(1, b"")[:3]))
        self.assertRaises(RuntimeError, other.hold)
        self.assertRaises(RuntimeError, other.release)


class PayloadViewTests(SynchronousTestCase):
    """
    L{PayloadChunk.data} is a view of the bytes given to C{feed}, not a copy.
    """

    def test_viewOfFedBytes(self) -> None:
        """
        The chunk's C{data} is a memoryview whose underlying object is the
        very bytes object that was fed, covering the payload.
        """
        stream = _frame(1, b"payload") + _frame(2, b"more")
        framer: Framer[Chunk] = Framer(_decodeChunk)
        chunks = [e for e in framer.feed(stream) if isinstance(e, PayloadChunk)]
        self.assertEqual(len(chunks), 2)
        for chunk, expected in zip(chunks, [b"payload", b"more"]):
            self.assertIsInstance(chunk.data, memoryview)
            self.assertIs(chunk.data.obj, stream)
            self.assertEqual(chunk.data.tobytes(), expected)

    def test_viewOfLaterFeed(self) -> None:
        """
        A payload that continues in a later C{feed} is a view of that feed's
        bytes.
        """
        framer: Framer[Chunk] = Framer(_decodeChunk)
        list(framer.feed(_frame(1, b"abcdef")[:-3]))
        later = b"def"
        (chunk, done) = list(framer.feed(later))
        assert isinstance(chunk, PayloadChunk)
        self.assertIs(chunk.data.obj, later)
        self.assertEqual(done, PayloadDone())

    def test_noCopy(self) -> None:
        """
        Changing the fed buffer in place changes what the chunk shows, so the
        payload was not copied.
        """
        stream = bytearray(_frame(1, b"abc"))
        framer: Framer[Chunk] = Framer(_decodeChunk)
        chunks = [e for e in framer.feed(stream) if isinstance(e, PayloadChunk)]  # type: ignore[arg-type]
        self.assertEqual(bytes(chunks[0].data), b"abc")
        stream[-3:] = b"XYZ"
        self.assertEqual(bytes(chunks[0].data), b"XYZ")


_frames = st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=40)),
    max_size=8,
)
_prefixes = st.sampled_from(["!I", "<I"])


def _expected(frames: list[tuple[int, bytes]]) -> list[Normal]:
    out: list[Normal] = []
    for image, payload in frames:
        out.append(_header(image, len(payload)))
        if payload:
            out += [("payload", payload), ("done", None)]
    return out


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(min(c, len(data)) for c in cuts)
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


class FramerPropertyTests(SynchronousTestCase):
    """
    Properties of L{Framer} over generated streams.
    """

    @_PROPERTY
    @given(frames=_frames, prefix=_prefixes, cuts=st.lists(st.integers(0, 400), max_size=20))
    def test_roundTrip(self, frames: list[tuple[int, bytes]], prefix: str, cuts: list[int]) -> None:
        """
        Frames encoded back to back and cut anywhere decode to the same
        headers and payload bytes, ending at a boundary.
        """
        stream = b"".join(_frame(image, payload, prefix) for image, payload in frames)
        recorder = _Recorder(self, Framer(_decodeChunk, prefix))
        self.assertEqual(recorder.feedAll(_cut(stream, cuts)), _expected(frames))
        self.assertTrue(recorder.framer.atBoundary)

    @_PROPERTY
    @given(
        frames=_frames,
        prefix=_prefixes,
        cuts=st.lists(st.integers(0, 400), max_size=20),
        early=st.booleans(),
    )
    def test_roundTripDecided(
        self, frames: list[tuple[int, bytes]], prefix: str, cuts: list[int], early: bool
    ) -> None:
        """
        With payload lengths decided by the consumer (during iteration or
        after each C{feed}), the same frames decode the same way.
        """
        stream = b"".join(_frame(image, payload, prefix) for image, payload in frames)
        recorder = _Recorder(self, Framer(_decodeOddLater, prefix), early=early)
        self.assertEqual(recorder.feedAll(_cut(stream, cuts)), _expected(frames))
        self.assertTrue(recorder.framer.atBoundary)

    @_PROPERTY
    @given(data=st.data(), prefix=_prefixes, maxHeaderSize=st.integers(0, 24))
    def test_garbage(self, data: st.DataObject, prefix: str, maxHeaderSize: int) -> None:
        """
        Random bytes, or valid streams with bytes changed, inserted or
        removed, fed in random pieces, raise nothing but L{FramingError}
        subclasses and never leave more than C{maxHeaderSize + 4} bytes
        buffered outside a pending decision.
        """
        # Regression: this found the struct.error of an expectPayload(0)
        # decision with more than 4 bytes buffered; see
        # DecisionTests.test_decideZeroWholeHeaderBuffered.
        frames = data.draw(_frames)
        valid = b"".join(_frame(image, payload, prefix) for image, payload in frames)
        stream = data.draw(
            st.one_of(
                st.binary(max_size=200),
                _mutated(valid),
            )
        )
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
        early = data.draw(st.one_of(st.booleans(), st.just(lambda m: m.image % 4 == 1)))
        decisions = data.draw(st.lists(st.integers(0, 10), min_size=1, max_size=5))
        counter = iter(range(10**6))

        def decide(message: Chunk) -> int:
            return decisions[next(counter) % len(decisions)]

        recorder = _Recorder(self, Framer(_decodeOddLater, prefix, maxHeaderSize), decide=decide, early=early)
        try:
            recorder.feedAll(_cut(stream, cuts))
        except FramingError:
            with self.assertRaises(FramingError):
                list(recorder.framer.feed(b""))


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """
    C{valid} with a few bytes flipped, inserted or removed.
    """
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif at < len(data):
            if op == "flip":
                data[at] ^= draw(st.integers(1, 255))
            else:
                del data[at]
    return bytes(data)
