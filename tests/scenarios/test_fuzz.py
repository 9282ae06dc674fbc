"""
Property-based robustness tests of every protocol in imgrelay (issue 4,
item 7): random and mutated byte streams, cut at random points, never let an
exception escape a protocol, never make it hold more than a bounded amount,
and every failure is a clean close with a logged reason.

Each protocol runs over a L{StringTransport} (CRIU's pipes are real
C{os.pipe()} ends, read and written on a L{MemoryReactorClock}, so nothing is
waited for). A stream is one of: a valid exchange, a valid exchange cut
short, a valid exchange with bytes flipped, inserted, deleted, copied or
replaced, a valid exchange with whole messages dropped, repeated, swapped,
inserted or replaced, a valid exchange followed by garbage, random
well-framed messages, or random bytes; it is delivered whole, byte by byte
or in random pieces. After every piece the tests check:

 - (a) nothing was raised;
 - (b) the protocol is either still healthy, or it is closing its transport
   and logged an error or warning with a non-empty C{reason} (and an error
   was never logged without a close); a valid exchange or a prefix of one
   always leaves it healthy;
 - (c) the framer holds at most a header's worth of bytes (64 KiB + 4)
   except while a restore request awaits its answer; the cache holds no more
   image bytes than it was fed;
 - (d) more bytes after a failure raise nothing either.

Each example ends with C{connectionLost}, which must raise nothing, and then
checks that every file descriptor handed to a protocol was closed.

L{RegressionTests} keeps the smallest inputs that broke these properties.
L{EXAMPLES} counts the examples each property ran in this process.
"""

from __future__ import annotations

import fcntl
import os
from collections import Counter
from typing import Any, Iterator, Optional, Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.wire.criu import frame as criuFrame
from imgrelay.wire.criu import streamReply
from imgrelay.core.errors import SessionError
from imgrelay.wire.framing import DEFAULT_MAX_HEADER, HeaderReceived, PayloadDone
from imgrelay.core.imagedata import FIRST_BLOCK, ImageData
from imgrelay.core.integrity import ManifestEntry, RunningChecksum, manifestDigest
from imgrelay.core.limits import Limits
from imgrelay.core.interfaces import IImageSink, IOutgoingImage
from imgrelay.wire.link import (
    APPEND,
    CREATE,
    REPLACE,
    CacheMessage,
    ProxyMessage,
    cacheMessageFramer,
    chunkHeader,
    frame,
    proxyMessageFramer,
)
from imgrelay.core.names import checkImageName
from imgrelay.wire.codecs import LZ4, RAW, ZSTD, encode
from imgrelay.wire.pb import criu_pb2, link_pb2
from imgrelay.transport.pipes import PipeReader
from imgrelay.proxy.link import ProxyLinkFactory, ProxyLinkProtocol
from imgrelay.transport.receiver import HEADER_READ
from imgrelay.proxy.session import OutgoingImage, ProxySession
from imgrelay.core.store import Image, Session
from imgrelay.core.slot import SessionSlot
from imgrelay.local.streamcapture import StreamCaptureProtocol
from imgrelay.local.streamserve import StreamServeProtocol

#: The most a framer may hold outside a pending decision: one whole header
#: and its length prefix.
_BOUND = DEFAULT_MAX_HEADER + 4


def _fuzz(examples: int) -> settings:
    """
    @return: Hypothesis settings for a fuzz test of C{examples} examples: no
        deadline, no example database (nothing written to disk).
    """
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


#: How many examples each test ran in this process, by test method name.
EXAMPLES: Counter[str] = Counter()


# Transports and logs.


class _Transport(StringTransport):
    """
    A lenient L{StringTransport} (pausing and resuming after a close is
    allowed, as a real transport allows it) that records every close.

    @ivar closes: C{"lose"} or C{"abort"} for each close asked for.
    """

    def __init__(self) -> None:
        StringTransport.__init__(self, lenient=True)
        self.closes: list[str] = []

    def loseConnection(self) -> None:
        """
        Record the close.
        """
        self.closes.append("lose")
        StringTransport.loseConnection(self)

    def abortConnection(self) -> None:
        """
        Record the abort.
        """
        self.closes.append("abort")
        StringTransport.abortConnection(self)

    @property
    def closing(self) -> bool:
        """
        Whether the protocol asked for the connection to end.
        """
        return bool(self.closes) or bool(self.disconnecting)


@implementer(ILogObserver)
class _LogCapture:
    """
    The log events of one example, collected from the global publisher
    between L{start} and L{stop}.
    """

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self._seen = 0

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def fresh(self) -> list[LogEvent]:
        """
        @return: The events logged since the last call.
        """
        events, self._seen = self.events[self._seen :], len(self.events)
        return events

    def start(self) -> "_LogCapture":
        """
        Begin collecting.
        """
        globalLogPublisher.addObserver(self)
        return self

    def stop(self) -> None:
        """
        Stop collecting.
        """
        globalLogPublisher.removeObserver(self)

    def at(self, *levels: LogLevel) -> list[LogEvent]:
        """
        @return: The events logged at any of C{levels}.
        """
        return [e for e in self.events if e.get("log_level") in levels]

    @property
    def errors(self) -> list[LogEvent]:
        """
        @return: The error and critical events.
        """
        return self.at(LogLevel.error, LogLevel.critical)

    @property
    def problems(self) -> list[LogEvent]:
        """
        @return: The warning, error and critical events.
        """
        return self.at(LogLevel.warn, LogLevel.error, LogLevel.critical)


def _describe(events: Sequence[LogEvent]) -> list[str]:
    """
    @return: C{events} as text, for failure messages.
    """
    return [formatEvent(e) for e in events]


#: What a peer may go on sending after the protocol gave up: more than a
#: header's worth.
_FLOOD = b"\x00\x00\x00\x05abcde" * (2 * _BOUND // 9)


def _flood(case: SynchronousTestCase, protocol: Any, transport: _Transport) -> None:
    """
    Property (d) and (c) after a failure: if the protocol is closing, more
    bytes than a header raise nothing, keep it closing, and are not held.
    """
    if not transport.closing:
        return
    protocol.dataReceived(_FLOOD)
    case.assertTrue(transport.closing)
    case.assertLessEqual(_framerOf(protocol).buffered, _BOUND, "bytes that arrive after a failure are held")


def _framerOf(protocol: Any) -> Any:
    """
    @return: The framer C{protocol} parses with now (a cache link's hello
        framer, then its session stream's).
    """
    if isinstance(protocol, CacheLinkProtocol):
        return protocol.stream.framer if protocol.stream is not None else protocol._hello
    return protocol._framer


# Streams.


def _pieces(data: bytes, cuts: Sequence[int]) -> list[tuple[int, bytes]]:
    """
    Cut C{data} at C{cuts}.

    @return: Each piece with its offset in C{data}; never empty unless
        C{data} is.
    """
    points = sorted({min(max(c, 0), len(data)) for c in cuts} - {0, len(data)})
    bounds = [0, *points, len(data)]
    return [(a, data[a:b]) for a, b in zip(bounds, bounds[1:])]


@st.composite
def _mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """
    C{valid} with one to four edits: a byte flipped, bytes inserted,
    deleted, replaced by garbage or copied elsewhere (a repeated message),
    or the stream cut short.
    """
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice", "copy", "truncate"]))
        at = draw(st.integers(0, len(data)))
        span = draw(st.integers(1, 12))
        if op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "splice":
            data[at : at + span] = draw(st.binary(min_size=1, max_size=16))
        elif op == "copy":
            source = draw(st.integers(0, len(data)))
            data[at:at] = data[source : source + draw(st.integers(1, 40))]
        elif op == "truncate":
            del data[at:]
        elif at < len(data):
            if op == "flip":
                data[at] ^= draw(st.integers(1, 255))
            else:
                del data[at : at + span]
    return bytes(data)


@st.composite
def _edited(draw: st.DrawFn, messages: list[bytes], one: st.SearchStrategy[bytes]) -> bytes:
    """
    C{messages} with one to three whole messages dropped, repeated, swapped,
    inserted or replaced: well-framed streams that break the exchange's
    rules rather than its framing.

    @param one: One random well-framed message.
    """
    items = list(messages)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "repeat", "swap", "insert", "replace"]))
        if op == "insert" or not items:
            items.insert(draw(st.integers(0, len(items))), draw(one))
            continue
        i = draw(st.integers(0, len(items) - 1))
        if op == "drop":
            del items[i]
        elif op == "repeat":
            items.insert(draw(st.integers(0, len(items))), items[i])
        elif op == "swap":
            j = draw(st.integers(0, len(items) - 1))
            items[i], items[j] = items[j], items[i]
        else:
            items[i] = draw(one)
    return b"".join(items)


#: How streams are derived from a valid exchange, weighted toward those that
#: get past the framing into the exchange's rules.
_KINDS = [
    "valid", "prefix", "mutated", "mutated", "edited", "edited", "edited", "garbage-after", "messages", "random"
]


@st.composite
def _variant(
    draw: st.DrawFn, messages: list[bytes], one: st.SearchStrategy[bytes], lead: bytes = b""
) -> tuple[bytes, bool]:
    """
    A stream derived from a valid exchange.

    @param messages: The valid exchange, message by message (a message with
        its payload or fd byte).
    @param one: One random but well-framed message.
    @param lead: What random messages usually follow (the link's hello).
    @return: The stream, and whether it is a prefix of the valid exchange
        (which the protocol must take without complaint).
    """
    valid = b"".join(messages)
    kind = draw(st.sampled_from(_KINDS))
    if kind == "valid":
        return valid, True
    if kind == "prefix":
        return valid[: draw(st.integers(0, len(valid)))], True
    if kind == "mutated":
        return draw(_mutated(valid)), False
    if kind == "edited":
        return draw(_edited(messages, one)), False
    if kind == "garbage-after":
        return valid + draw(st.binary(min_size=1, max_size=40)), False
    if kind == "messages":
        start = lead if draw(st.booleans()) else b""
        return start + b"".join(draw(st.lists(one, max_size=8))), False
    return draw(st.binary(max_size=300)), False


def _cuts(data: st.DataObject, stream: bytes) -> list[int]:
    """
    Draw where C{stream} is cut: often nowhere, sometimes every byte.
    """
    how = data.draw(st.sampled_from(["whole", "random", "bytewise"]), label="cut")
    if how == "whole":
        return []
    if how == "bytewise":
        return list(range(1, len(stream)))
    return data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")


_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)

#: Names CRIU writes, and names a hostile peer might send.
_GOOD_NAMES = ["inventory.img", "pages-1.img", "core-1.img", "mm-1.img", "files.img"]
_BAD_NAMES = ["", ".", "..", "a/b", "x\0y", "n" * 256, "\u00e9" * 128]
_someName = st.one_of(st.sampled_from(_GOOD_NAMES + _BAD_NAMES), st.text(max_size=12))
_SNAPSHOTS = ["", "/run/dump", "/run/dump/1"]
_someText = st.one_of(st.text(max_size=16), st.sampled_from(["", "\0", "x" * 5000]))
_someId = st.one_of(st.integers(0, 15), _u32)


# The cache's end of the link.


def _proxyFrame(**kind: Any) -> bytes:
    """
    @return: A framed L{ProxyMessage} of the given kind.
    """
    return frame(ProxyMessage(**kind))


def _packedChunk(image: int, piece: bytes, encoding: int) -> bytes:
    """
    @return: A chunk of C{piece}, encoded with C{encoding} (or raw).
    """
    if encoding == RAW:
        return chunkHeader(image, len(piece)) + piece
    payload = encode(encoding, piece)
    return _proxyFrame(chunk=link_pb2.Chunk(image=image, length=len(payload), encoding=encoding, size=len(piece))) \
        + payload


#: A Zstandard frame of 64 MiB of zeros (over the largest chunk), a few
#: kilobytes long.
_BOMB = encode(ZSTD, bytes(64 << 20))


def _expansion(fed: bytes) -> int:
    """
    @return: How many more image bytes than payload bytes the whole
        encoded chunks in C{fed} announce: the most decoding may add to
        what was fed.
    """
    framer = proxyMessageFramer()
    extra, pending = 0, None
    try:
        for event in framer.feed(fed):
            if isinstance(event, HeaderReceived) and event.message.WhichOneof("kind") == "chunk":
                chunk = event.message.chunk
                pending = max(0, chunk.size - chunk.length) if chunk.encoding != RAW else None
                if chunk.length == 0 and pending is not None:
                    extra, pending = extra + pending, None
            elif isinstance(event, PayloadDone) and pending is not None:
                extra, pending = extra + pending, None
    except Exception:
        pass
    return extra


def _hello(session: str = "mig", version: int = 1) -> bytes:
    """
    @return: A framed Hello.
    """
    return _proxyFrame(hello=link_pb2.Hello(version=version, session=session))


@st.composite
def _linkSession(draw: st.DrawFn, done: Optional[bool] = None) -> list[bytes]:
    """
    A valid link session: hello, a few images (some in several versions,
    replaced or appended to) whose opens, chunks and closes interleave,
    snapshot pushes, then the final handshake.

    @param done: Whether the final handshake ends it (drawn if None).
    @return: Its messages, each chunk header with its payload.
    """
    keys = draw(
        st.lists(st.tuples(st.sampled_from(_SNAPSHOTS), st.sampled_from(_GOOD_NAMES)), unique=True, max_size=4)
    )
    versions = [draw(st.lists(st.sampled_from([REPLACE, APPEND]), max_size=2)) for _ in keys]
    # Small ids, so that random messages often name an image of the session.
    ids = iter(draw(st.lists(st.integers(0, 15), unique=True, min_size=12, max_size=12)))
    scripts: list[list[bytes]] = []
    entries: list[ManifestEntry] = []
    for (snapshotId, name), modes in zip(keys, versions):
        # One script per image: its versions follow each other.
        messages: list[bytes] = []
        whole = b""
        for mode in [CREATE, *modes]:
            imageId = next(ids)
            content = draw(st.binary(max_size=80))
            whole = whole + content if mode == APPEND else content
            messages.append(
                _proxyFrame(open=link_pb2.ImageOpen(image=imageId, name=name, snapshot_id=snapshotId, mode=mode))
            )
            for _, piece in _pieces(content, draw(st.lists(st.integers(0, len(content)), max_size=3))):
                if piece:
                    encoding = draw(st.sampled_from([RAW, RAW, ZSTD, LZ4]))
                    messages.append(_packedChunk(imageId, piece, encoding))
            checksum = RunningChecksum()
            checksum.update(whole)
            messages.append(
                _proxyFrame(close=link_pb2.ImageClose(image=imageId, size=checksum.size, crc32c=checksum.crc))
            )
        entries.append(ManifestEntry(snapshotId, name, checksum.size, checksum.crc))
        scripts.append(messages)
    for snapshotId in draw(st.lists(st.sampled_from(_SNAPSHOTS), max_size=2)):
        scripts.append([_proxyFrame(snapshot=link_pb2.SnapshotPush(snapshot_id=snapshotId))])
    order = draw(st.permutations([i for i, messages in enumerate(scripts) for _ in messages]))
    body = [scripts[i].pop(0) for i in order]
    if draw(st.booleans()) if done is None else done:
        body.append(
            _proxyFrame(
                done=link_pb2.Done(
                    images=len(entries),
                    bytes=sum(e.size for e in entries),
                    manifest_sha256=manifestDigest(entries),
                )
            )
        )
    return [_hello(), *body]


#: One well-framed proxy message with arbitrary content; a chunk header
#: comes with a payload that may be shorter or longer than it announced.
_proxyMessage = st.one_of(
    st.builds(lambda v, s: _hello(s, v), st.sampled_from([0, 1, 1, 2, 2**32 - 1]), _someText),
    st.builds(
        lambda i, n, s, m: _proxyFrame(open=link_pb2.ImageOpen(image=i, name=n, snapshot_id=s, mode=m)),
        _someId,
        _someName,
        st.one_of(st.sampled_from(_SNAPSHOTS), _someText),
        st.sampled_from([CREATE, CREATE, REPLACE, APPEND, 3, 2**31 - 1]),
    ),
    st.builds(lambda s: _proxyFrame(snapshot=link_pb2.SnapshotPush(snapshot_id=s)), _someText),
    st.builds(lambda i, p: chunkHeader(i, len(p)) + p, _someId, st.binary(max_size=40)),
    st.builds(
        lambda i, n, p: chunkHeader(i, n) + p, _someId, st.integers(0, (16 << 20) + 1), st.binary(max_size=20)
    ),
    st.builds(
        lambda i, e, n, p: _proxyFrame(chunk=link_pb2.Chunk(image=i, length=len(p), encoding=e, size=n)) + p,
        _someId,
        st.sampled_from([ZSTD, LZ4, 3]),
        st.one_of(st.integers(0, 100), st.integers(0, (16 << 20) + 1)),
        st.one_of(st.binary(max_size=40), st.sampled_from([_BOMB, _BOMB[:-3], encode(LZ4, bytes(5000))])),
    ),
    st.builds(
        lambda i, n, c: _proxyFrame(close=link_pb2.ImageClose(image=i, size=n, crc32c=c)),
        _someId,
        st.one_of(st.integers(0, 100), _u64),
        _u32,
    ),
    st.builds(
        lambda n, b, d: _proxyFrame(done=link_pb2.Done(images=n, bytes=b, manifest_sha256=d)),
        st.integers(0, 5),
        st.one_of(st.integers(0, 200), _u64),
        st.binary(max_size=40),
    ),
    st.builds(lambda r: _proxyFrame(abort=link_pb2.Abort(reason=r)), _someText),
    st.just(b"\x00\x00\x00\x00"),
)


def _imageData(protocol: CacheLinkProtocol) -> list[ImageData]:
    """
    @return: The data of every image the link's session holds, open or
        verified.
    """
    state = protocol.state
    datas = [incoming.data for incoming in state._open.values()]
    if state.session is not None:
        datas += [image.data for image in state.session.images.values()]
    return datas


#: How the link's bytes arrive: through C{dataReceived} only (None), or
#: read as L{imgrelay.transport.receiver.SocketReceiver} reads them, in reads of this
#: size.
_readSizes = st.one_of(st.none(), st.integers(1, 100), st.just(HEADER_READ))


def _receive(case: SynchronousTestCase, protocol: CacheLinkProtocol, data: bytes, readSize: int) -> None:
    """
    Deliver C{data} as L{imgrelay.transport.receiver.SocketReceiver.doRead} does, one
    read at a time: into L{CacheLinkProtocol.payloadTarget} when it offers
    one, and once that is full, up to C{readSize} bytes more (the spare
    buffer) to C{dataReceived}; else C{readSize} bytes to C{dataReceived}.
    """
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        target = protocol.payloadTarget()
        if target is not None:
            case.assertGreater(len(target), 0)
            case.assertGreater(protocol.payloadRemaining(), 0)
            n = min(len(target), len(view) - pos, readSize)
            target[:n] = view[pos : pos + n]
            protocol.payloadReceived(n)
            pos += n
            if n < len(target):
                continue
        n = min(readSize, len(view) - pos)
        if n:
            protocol.dataReceived(bytes(view[pos : pos + n]))
        pos += n


class CacheLinkFuzzTests(SynchronousTestCase):
    """
    L{CacheLinkProtocol} fed random and mutated proxy streams.
    """

    def _drive(
        self, stream: bytes, cuts: list[int], extra: bytes, prefix: bool, readSize: Optional[int] = None
    ) -> CacheLinkProtocol:
        """
        Feed C{stream} cut at C{cuts}, then C{extra}, checking the
        properties after each piece; end with C{connectionLost}.

        @param prefix: Whether C{stream} is a prefix of a valid session.
        @param readSize: If given, deliver each piece as the link's
            C{SocketReceiver} does, in reads of at most this many bytes:
            payload straight into L{CacheLinkProtocol.payloadTarget}, the
            rest to C{dataReceived}.
        @return: The protocol, disconnected.
        """
        clock = Clock()
        slot = SessionSlot(clock=clock.seconds)
        protocol = CacheLinkProtocol(slot, clock.seconds, MemoryReactorClock())
        transport = _Transport()
        logs = _LogCapture().start()

        def deliver(piece: bytes) -> None:
            if readSize is None:
                protocol.dataReceived(piece)
            else:
                _receive(self, protocol, piece, readSize)

        try:
            protocol.makeConnection(transport)
            fed = b""
            for _, piece in _pieces(stream, cuts):
                deliver(piece)
                fed += piece
                self._check(protocol, transport, logs, fed, prefix)
            closedBefore = transport.closing
            deliver(extra)
            fed += extra
            self._check(protocol, transport, logs, fed, prefix and not extra)
            if closedBefore:
                self.assertTrue(transport.closing)
            _flood(self, protocol, transport)
            # The cache's answers are whole messages.
            framer = cacheMessageFramer()
            list(framer.feed(transport.value()))
            self.assertTrue(framer.atBoundary)
            protocol.connectionLost(Failure(ConnectionDone()))
            session = protocol.state.session
            if session is not None:
                self.assertTrue(session.final, "a session is left receiving after its link was lost")
        finally:
            logs.stop()
        return protocol

    def _check(
        self, protocol: CacheLinkProtocol, transport: _Transport, logs: _LogCapture, fed: bytes, prefix: bool
    ) -> None:
        """
        Properties (b) and (c) after C{fed}: the session holds no more
        image bytes than were fed, plus what the whole encoded chunks among
        them announced they decode to beyond their payloads.
        """
        self.assertLessEqual(_framerOf(protocol).buffered, _BOUND)
        # An append shares the bytes of the version it continues: count
        # only what each version added.
        held = sum(d.size - sum(len(v) for v in d._frozen) for d in _imageData(protocol))
        self.assertLessEqual(held, len(fed) + _expansion(fed), "the session holds more image bytes than were fed")
        _assertOutcome(self, transport, logs, healthy=prefix)

    @_fuzz(800)
    @given(data=st.data())
    def test_streams(self, data: st.DataObject) -> None:
        """
        Valid link sessions, their prefixes, mutations of them, random
        messages and random bytes, fed in random pieces and followed by more
        bytes, raise nothing; the framer never holds more than a header; the
        session never holds more image bytes than were fed; the link is
        healthy after any prefix of a valid session and otherwise either
        healthy or closing with an error logged with its reason. The bytes
        arrive through C{dataReceived}, or as the link's C{SocketReceiver}
        hands them over (payload received straight into the image).
        """
        valid = data.draw(_linkSession(), label="valid")
        stream, prefix = data.draw(_variant(valid, _proxyMessage, _hello()), label="stream")
        cuts = _cuts(data, stream)
        extra = data.draw(st.binary(max_size=40), label="extra")
        readSize = data.draw(_readSizes, label="read size")
        EXAMPLES["CacheLinkFuzzTests.test_streams"] += 1
        self._drive(stream, cuts, extra, prefix, readSize)

    @_fuzz(300)
    @given(data=st.data())
    def test_wholeSessionsComplete(self, data: st.DataObject) -> None:
        """
        A valid link session ending with the final handshake, cut anywhere
        and delivered either way, completes: every image verified, nothing
        logged above info.
        """
        valid = b"".join(data.draw(_linkSession(done=True), label="valid"))
        cuts = _cuts(data, valid)
        readSize = data.draw(_readSizes, label="read size")
        EXAMPLES["CacheLinkFuzzTests.test_wholeSessionsComplete"] += 1
        protocol = self._drive(valid, cuts, b"", True, readSize)
        session = protocol.state.session
        assert session is not None
        self.assertTrue(protocol.state._finished)
        self.assertIsNone(session.failure)

    @_fuzz(100)
    @given(count=st.integers(1, 64), lengths=st.lists(st.integers(1, 200), min_size=1, max_size=3))
    def test_allocationProportional(self, count: int, lengths: list[int]) -> None:
        """
        The memory the cache allocates for a link's images stays within a
        constant factor of the bytes the proxy sent (plus one first block):
        a proxy cannot make the cache allocate far beyond what it sends by
        opening many images and sending a few bytes of each.
        """
        EXAMPLES["CacheLinkFuzzTests.test_allocationProportional"] += 1
        stream = _hello() + b"".join(
            _proxyFrame(open=link_pb2.ImageOpen(image=i, name=f"pages-{i}.img"))
            + b"".join(chunkHeader(i, n) + b"x" * n for n in lengths)
            for i in range(count)
        )
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds, MemoryReactorClock())
        protocol.makeConnection(_Transport())
        protocol.dataReceived(stream)
        allocated = sum(len(block) for d in _imageData(protocol) for block in d._blocks)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertLessEqual(
            allocated,
            4 * len(stream) + FIRST_BLOCK,
            f"{allocated} bytes allocated for {count} open images after {len(stream)} bytes fed",
        )


def _assertOutcome(
    case: SynchronousTestCase,
    transport: _Transport,
    logs: _LogCapture,
    healthy: bool,
    succeeded: bool = False,
    quiet: bool = True,
) -> None:
    """
    Property (b): a protocol that closes its transport logged an error or
    warning with a non-empty reason (unless C{succeeded}: it closed because
    its session completed); one that logged an error closes; one that must
    be C{healthy} neither closed nor logged an error (nor, if C{quiet}, a
    warning).
    """
    for event in logs.fresh():
        text = formatEvent(event)
        if text.startswith("Unable to format event") or "log_failure" in event:
            case.fail(f"unformattable log event, or an exception logged: {text}")
    if healthy:
        unwanted = logs.problems if quiet else logs.errors
        if transport.closes or unwanted:
            case.fail(f"closed ({transport.closes}) or complained after a valid prefix: {_describe(unwanted)}")
        return
    if transport.closing and not succeeded:
        if not any(isinstance(e.get("reason"), str) and e["reason"].strip() for e in logs.problems):
            case.fail(f"closed without logging a reason; logged: {_describe(logs.events)}")
    if logs.errors and not transport.closing:
        case.fail(f"error logged but the connection stays open: {_describe(logs.errors)}")


# The proxy's end of the link.


def _cacheFrame(**kind: Any) -> bytes:
    """
    @return: A framed L{CacheMessage} of the given kind.
    """
    return frame(CacheMessage(**kind))


_ACCEPT = _cacheFrame(accept=link_pb2.Accept())
_DONE_OK = _cacheFrame(done_ok=link_pb2.DoneOk())

#: One well-framed cache message with arbitrary content.
_cacheMessage = st.one_of(
    st.just(_ACCEPT),
    st.builds(lambda r: _cacheFrame(refuse=link_pb2.Refuse(reason=r)), _someText),
    st.builds(lambda i: _cacheFrame(ack=link_pb2.ImageAck(image=i)), _someId),
    st.builds(
        lambda i, r: _cacheFrame(image_refused=link_pb2.ImageRefused(image=i, reason=r)), _someId, _someText
    ),
    st.just(_DONE_OK),
    st.builds(lambda r: _cacheFrame(failed=link_pb2.SessionFailed(reason=r)), _someText),
    st.just(b"\x00\x00\x00\x00"),
)


def _consume(session: ProxySession) -> None:
    """
    Consume the session's outcome, whatever it is, so that a failure is not
    reported as unhandled at garbage collection.
    """
    session.ready.addErrback(lambda f: None)
    session.result.addErrback(lambda f: None)


class ProxyLinkFuzzTests(SynchronousTestCase):
    """
    L{ProxyLinkProtocol} fed random and mutated cache streams.
    """

    def _connect(self) -> tuple[ProxyLinkProtocol, ProxySession, _Transport]:
        """
        @return: A link protocol for a new session, connected (it said
            hello), the session, and the transport.
        """
        clock = Clock()
        session = ProxySession("s", clock.seconds)
        _consume(session)
        protocol = ProxyLinkFactory(session, MemoryReactorClock()).buildProtocol(None)
        transport = _Transport()
        protocol.makeConnection(transport)
        return protocol, session, transport

    def _feed(
        self,
        protocol: ProxyLinkProtocol,
        session: ProxySession,
        transport: _Transport,
        logs: _LogCapture,
        stream: bytes,
        cuts: list[int],
        extra: bytes,
        prefix: bool,
    ) -> None:
        """
        Feed C{stream} cut at C{cuts}, then C{extra}, checking the
        properties after each piece; end with C{connectionLost}.
        """
        for _, piece in _pieces(stream, cuts):
            protocol.dataReceived(piece)
            self._check(protocol, session, transport, logs, prefix)
        closedBefore = transport.closing
        protocol.dataReceived(extra)
        self._check(protocol, session, transport, logs, prefix and not extra)
        if closedBefore:
            self.assertTrue(transport.closing)
        _flood(self, protocol, transport)
        protocol.connectionLost(Failure(ConnectionDone()))
        # Over, or waiting for another connection to resume it with its
        # pipes held.
        self.assertTrue(session.over or (not protocol.stream.connected and session.paused))

    def _check(
        self,
        protocol: ProxyLinkProtocol,
        session: ProxySession,
        transport: _Transport,
        logs: _LogCapture,
        prefix: bool,
    ) -> None:
        """
        Properties (b) and (c); closing after the session completed needs no
        logged reason.
        """
        self.assertLessEqual(protocol._framer.buffered, _BOUND)
        succeeded = session.result.called and not logs.errors
        _assertOutcome(self, transport, logs, healthy=prefix and not succeeded, succeeded=succeeded)

    @_fuzz(800)
    @given(data=st.data())
    def test_streams(self, data: st.DataObject) -> None:
        """
        Random sequences of cache messages (accept, ack, refuse,
        image_refused, done_ok, failed), mutations of them and random bytes,
        fed in random pieces and followed by more bytes, raise nothing, never
        leave more than a header buffered, and end the session and the link
        with an error logged with its reason, or leave both as they were.
        """
        valid = data.draw(st.sampled_from([[], [_ACCEPT]]), label="valid")
        stream, prefix = data.draw(_variant(valid, _cacheMessage, _ACCEPT), label="stream")
        cuts = _cuts(data, stream)
        extra = data.draw(st.binary(max_size=40), label="extra")
        EXAMPLES["ProxyLinkFuzzTests.test_streams"] += 1
        protocol, session, transport = self._connect()
        logs = _LogCapture().start()
        try:
            self._feed(protocol, session, transport, logs, stream, cuts, extra, prefix)
        finally:
            logs.stop()

    @_fuzz(500)
    @given(data=st.data())
    def test_sessionAnswers(self, data: st.DataObject) -> None:
        """
        After the cache accepted a session whose dump sent a few images and
        the final handshake, its valid answers (every image acknowledged in
        any order, then DoneOk), their prefixes, mutations and random bytes
        raise nothing; a prefix leaves the session waiting, the whole answer
        completes it with nothing logged above info, and anything else is
        either ignored until more comes or fails it with a logged reason.
        """
        names = data.draw(st.lists(st.sampled_from(_GOOD_NAMES), unique=True, max_size=4), label="images")
        contents = [data.draw(st.binary(max_size=30), label=name) for name in names]
        # The session numbers its images from 1, in the order they open.
        acks = data.draw(st.permutations(range(1, len(names) + 1)), label="acks")
        valid = [_cacheFrame(ack=link_pb2.ImageAck(image=i)) for i in acks] + [_DONE_OK]
        stream, prefix = data.draw(_variant(valid, _cacheMessage), label="stream")
        cuts = _cuts(data, stream)
        extra = b"" if stream == b"".join(valid) else data.draw(st.binary(max_size=40), label="extra")
        EXAMPLES["ProxyLinkFuzzTests.test_sessionAnswers"] += 1
        protocol, session, transport = self._connect()
        logs = _LogCapture().start()
        try:
            protocol.dataReceived(_ACCEPT)
            images: list[OutgoingImage] = []
            for name, content in zip(names, contents):
                image = session.openImage("", name)
                image.write(content)
                images.append(image)
            self.assertEqual([image.id for image in images], list(range(1, len(names) + 1)))
            for image in images:
                image.close()
            session.finish()
            self._feed(protocol, session, transport, logs, stream, cuts, extra, prefix)
            if stream == b"".join(valid):
                outcome = self.successResultOf(session.result)
                self.assertEqual((outcome.images, outcome.bytes), (len(names), sum(map(len, contents))))
                self.assertEqual(transport.closes, ["lose"])
                self.assertEqual(_describe(logs.problems), [])
        finally:
            logs.stop()


# CRIU's --stream sockets: pipes, fds, fakes.


def _isOpen(fd: int) -> bool:
    """
    @return: Whether C{fd} is an open descriptor.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


class _Pipes:
    """
    Real pipes for one example, all created up front so that no descriptor
    number is reused while the example runs.

    @ivar passed: The ends handed to the protocol (read ends on the dump
        side, write ends on the restore side), in order.
    @ivar other: For each passed end, the end the test keeps.
    """

    def __init__(self, count: int, passRead: bool) -> None:
        self.passed: list[int] = []
        self.other: dict[int, int] = {}
        for _ in range(count):
            r, w = os.pipe()
            mine, theirs = (w, r) if passRead else (r, w)
            self.passed.append(theirs)
            self.other[theirs] = mine
        self.delivered: list[int] = []

    def leaked(self) -> list[int]:
        """
        @return: The ends handed over that are still open.
        """
        return [fd for fd in self.delivered if _isOpen(fd)]

    def closeAll(self) -> None:
        """
        Close every end the protocol did not get, and every end the test
        kept.
        """
        for fd in self.passed:
            if fd not in self.delivered and _isOpen(fd):
                os.close(fd)
        for fd in self.other.values():
            if _isOpen(fd):
                os.close(fd)
        for fd in self.delivered:
            if _isOpen(fd):
                os.close(fd)


def _withFds(
    stream: bytes, cuts: Sequence[int], fdOffsets: Sequence[int]
) -> Iterator[tuple[int, int, bytes]]:
    """
    Cut C{stream}; each passed fd, given by the offset of the byte it rides
    on, is delivered before the piece holding that byte.

    @return: For each piece, the index of the first and past-last fd
        delivered before it, and the piece.
    """
    offsets = sorted(fdOffsets)
    sent = 0
    for start, piece in _pieces(stream, cuts):
        end = start + len(piece)
        first = sent
        while sent < len(offsets) and offsets[sent] < end:
            sent += 1
        yield first, sent, piece


@implementer(IOutgoingImage)
class _FakeImage:
    """
    An image the fake sink was given.
    """

    ring = None

    def __init__(self, sink: "_FakeSink", name: str) -> None:
        self.sink = sink
        self.name = name
        self.data = bytearray()
        self.closed = False
        self.producer: Optional[IPushProducer] = None

    def attachProducer(self, producer: object) -> None:
        """
        Keep the pipe reader, and pause or resume it as a session would.
        """
        self.producer = IPushProducer(producer)
        if self.sink.paused:
            self.producer.pauseProducing()
        else:
            self.producer.resumeProducing()

    def write(self, data: bytes) -> None:
        """
        Keep the image's next bytes.
        """
        assert not self.closed, f"write to {self.name} after its close"
        self.data += data

    def close(self) -> None:
        """
        The image ended.
        """
        assert not self.closed, f"{self.name} closed twice"
        self.closed = True


@implementer(IImageSink)
class _FakeSink:
    """
    An L{IImageSink} that keeps what it gets and, like a L{ProxySession},
    logs its failure and fails C{result}.
    """

    log = Logger()

    def __init__(self) -> None:
        self.ready: Deferred[None] = succeed(None)
        self.result: Deferred[None] = Deferred()
        self.paused = False
        self.images: list[_FakeImage] = []
        self.finished = False
        self.aborted: list[str] = []
        self.over = False

    def openImage(self, snapshotId: str, name: str, mode: int = CREATE) -> _FakeImage:
        """
        Begin an image, refusing a bad name as a session does.
        """
        if self.over or self.finished:
            raise SessionError("session takes no new image now")
        checkImageName(name)
        image = _FakeImage(self, name)
        self.images.append(image)
        return image

    def pushSnapshot(self, snapshotId: str) -> None:
        """
        Nothing to keep.
        """
        if self.over:
            raise SessionError("session takes no snapshot now")

    def finish(self) -> None:
        """
        Record that the dump connection ended.
        """
        self.finished = True

    def abort(self, reason: str) -> None:
        """
        Fail the session, as a L{ProxySession} does.
        """
        self.aborted.append(reason)
        self.fail(f"aborted: {reason}")

    def fail(self, reason: str) -> None:
        """
        The session failed.
        """
        if self.over:
            return
        self.over = True
        self.log.error("session {session} failed: {reason}", session="fuzz", reason=reason)
        self.result.errback(SessionError(reason))


def _request(name: str) -> bytes:
    """
    @return: A framed C{--stream} request for C{name}.
    """
    return criuFrame(criu_pb2.StreamRequest(filename=name))


#: One random restore or dump request, with its fd byte or not, or a
#: stray byte or two.
_criuMessage = st.one_of(
    st.builds(_request, _someName),
    st.builds(lambda n: _request(n) + b"\x00", _someName),
    st.just(b"\x00"),
    st.just(b"\x00\x00\x00\x00"),
    st.binary(min_size=1, max_size=6),
)


def _fdOffsets(messages: list[bytes], withFd: Sequence[bool]) -> list[int]:
    """
    @return: The offset of the last byte (the fd byte) of each message that
        comes C{withFd}, in the stream of C{messages}.
    """
    offsets = []
    end = 0
    for message, fd in zip(messages, withFd):
        end += len(message)
        if fd:
            offsets.append(end - 1)
    return offsets


def _drawFdOffsets(
    data: st.DataObject, stream: bytes, valid: bytes, prefix: bool, validOffsets: list[int]
) -> list[int]:
    """
    Where pipes arrive in C{stream}: with their bytes in a prefix of the
    valid exchange; otherwise at random points, or with some 0x00 bytes.
    """
    if prefix and valid.startswith(stream):
        return [o for o in validOffsets if o < len(stream)]
    zeros = [i for i, b in enumerate(stream) if b == 0][:5]
    return data.draw(st.one_of(st.lists(st.integers(0, len(stream)), max_size=5), st.just(zeros)), label="fds")


@st.composite
def _dumpScript(draw: st.DrawFn) -> tuple[list[bytes], list[str]]:
    """
    A valid dump connection: requests, each followed by its pipe's byte.

    @return: The messages and the names.
    """
    names = draw(st.lists(st.sampled_from(_GOOD_NAMES), max_size=4))
    return [_request(name) + b"\x00" for name in names], names


class StreamCaptureFuzzTests(SynchronousTestCase):
    """
    L{StreamCaptureProtocol} fed random and mutated dump connections, with
    real pipes passed among the bytes.
    """

    def test_fakes(self) -> None:
        """
        The fake sink and its images provide the interfaces the protocol
        uses.
        """
        sink = _FakeSink()
        self.assertTrue(verifyObject(IImageSink, sink))
        self.assertTrue(verifyObject(IOutgoingImage, sink.openImage("", "core-1.img")))

    @_fuzz(500)
    @given(data=st.data())
    def test_streams(self, data: st.DataObject) -> None:
        """
        Valid dump connections (each request followed by its pipe and its
        0x00 byte), their prefixes, mutations, random requests and random
        bytes, with pipes passed at random points, pipes reaching their end
        and the session failing at random moments, raise nothing; the framer
        never holds more than a header; a prefix leaves the connection
        healthy (and a whole one finishes the session on close); anything
        else is healthy or closing with an error logged with its reason;
        and every pipe passed is closed once its image ended, the dump
        failed or the connection is lost and its readers stopped.
        """
        messages, names = data.draw(_dumpScript(), label="valid")
        valid = b"".join(messages)
        stream, prefix = data.draw(_variant(messages, _criuMessage), label="stream")
        offsets = _drawFdOffsets(data, stream, valid, prefix, _fdOffsets(messages, [True] * len(messages)))
        cuts = _cuts(data, stream)
        # Pipes that reach their end, and the session failing, between pieces.
        ends = data.draw(st.lists(st.integers(0, len(cuts) + 1), max_size=3), label="pipe ends")
        failAt = data.draw(st.one_of(st.none(), st.integers(0, len(cuts) + 1)), label="session fails")
        extra = data.draw(st.binary(max_size=20), label="extra")
        healthy = prefix and failAt is None
        EXAMPLES["StreamCaptureFuzzTests.test_streams"] += 1

        pipes = _Pipes(len(offsets), passRead=True)
        sink = _FakeSink()
        protocol = StreamCaptureProtocol(lambda: sink, MemoryReactorClock(), Limits(), lambda: None)
        transport = _Transport()
        logs = _LogCapture().start()
        written: dict[str, bytes] = {}
        try:
            protocol.makeConnection(transport)
            for step, (first, past, piece) in enumerate(_withFds(stream, cuts, offsets)):
                for fd in pipes.passed[first:past]:
                    pipes.delivered.append(fd)
                    protocol.fileDescriptorReceived(fd)
                protocol.dataReceived(piece)
                self._check(protocol, transport, logs, healthy)
                for _ in range(ends.count(step)):
                    self._endOnePipe(protocol, sink, pipes, written)
                    self._check(protocol, transport, logs, healthy)
                if failAt == step:
                    sink.fail("the link broke")
                    self.assertTrue(transport.closing)
            closedBefore = transport.closing
            atBoundary = protocol._framer.atBoundary
            protocol.dataReceived(extra)
            self._check(protocol, transport, logs, healthy and not extra)
            if closedBefore:
                self.assertTrue(transport.closing)
            _flood(self, protocol, transport)
            protocol.connectionLost(Failure(ConnectionDone()))
            if healthy and not extra:
                # A dump that succeeded wrote inventory.img; one that ends
                # without it is given up.
                inventory = any(i.name == "inventory.img" for i in sink.images)
                self.assertEqual(sink.finished, atBoundary and inventory)
                self.assertEqual(bool(sink.aborted), not (atBoundary and inventory))
                if stream == valid:
                    self.assertEqual([i.name for i in sink.images], names)
            for image in sink.images:
                if image.name in written and image.closed:
                    self.assertEqual(bytes(image.data), written[image.name])
            # Pipes still open go on after the connection ends; stop them.
            for reader in list(protocol._readers):
                reader.abort()
            self.assertEqual(pipes.leaked(), [], "pipes passed to the protocol were left open")
        finally:
            logs.stop()
            pipes.closeAll()

    def _endOnePipe(
        self, protocol: StreamCaptureProtocol, sink: _FakeSink, pipes: _Pipes, written: dict[str, bytes]
    ) -> None:
        """
        CRIU writes a few bytes into the oldest open pipe and closes it; the
        reactor reads it to its end.
        """
        readers = sorted(protocol._readers, key=lambda r: r.fileno())
        if not readers:
            return
        reader: PipeReader = readers[0]
        image = next(i for i in sink.images if i.producer is reader)
        content = image.name.encode("utf-8", "surrogatepass") * 3
        written[image.name] = content
        writeEnd = pipes.other[reader.fileno()]
        os.write(writeEnd, content)
        os.close(writeEnd)
        why = None
        while why is None:
            why = reader.doRead()
        reader.connectionLost(Failure(why))

    def _check(
        self, protocol: StreamCaptureProtocol, transport: _Transport, logs: _LogCapture, healthy: bool
    ) -> None:
        """
        Properties (b) and (c).
        """
        self.assertLessEqual(protocol._framer.buffered, _BOUND)
        _assertOutcome(self, transport, logs, healthy=healthy)


#: The images of the restored session.
_STORED = {"inventory.img": b"inv", "pages-1.img": b"\x01" * 50, "core-1.img": b""}
_MISSING = ["memfd.img", "tty-info.img"]
_REPLIES = {streamReply(True), streamReply(False)}


def _storedSession(slot: SessionSlot, complete: bool) -> Session:
    """
    Claim the slot's session and verify the stored images in it.
    """
    session = slot.claim("mig")
    for name, content in _STORED.items():
        data = ImageData()
        data.append(content)
        data.close()
        checksum = RunningChecksum()
        checksum.update(content)
        session.addVerified(Image("", name, data, checksum.crc))
    if complete:
        session.complete()
    return session


@st.composite
def _restoreScript(draw: st.DrawFn, available: bool) -> tuple[list[bytes], list[bool]]:
    """
    A valid restore connection: requests, each that exists followed by its
    pipe's byte.

    @param available: Whether the stored images are served (the session
        did not fail).
    @return: The messages, and whether each request is answered "exists".
    """
    names = draw(st.lists(st.sampled_from(sorted(_STORED) + _MISSING), max_size=5))
    exists = [available and name in _STORED for name in names]
    return [_request(name) + (b"\x00" if there else b"") for name, there in zip(names, exists)], exists


class StreamServeFuzzTests(SynchronousTestCase):
    """
    L{StreamServeProtocol} fed random and mutated restore connections, with
    real pipes passed among the bytes.
    """

    @_fuzz(500)
    @given(data=st.data())
    def test_streams(self, data: st.DataObject) -> None:
        """
        Valid restore connections (a request, and after an image that exists
        its pipe and 0x00 byte), their prefixes, mutations, random requests
        and random bytes, with pipes passed at random points, against a
        session that is complete, failed, or still receiving and completed
        or failed at a random moment, raise nothing; outside a request
        awaiting its answer the framer never holds more than a header; every
        reply is a whole StreamReply; a prefix leaves the connection healthy
        and answers every request as expected; anything else is healthy or
        closing with an error logged with its reason; every image written
        into a pipe is written whole; and every pipe passed is closed once
        written or once the connection is lost.
        """
        state = data.draw(st.sampled_from(["complete", "failed", "later-complete", "later-failed"]), label="session")
        messages, exists = data.draw(_restoreScript(state != "failed"), label="valid")
        valid = b"".join(messages)
        stream, prefix = data.draw(_variant(messages, _criuMessage), label="stream")
        offsets = _drawFdOffsets(data, stream, valid, prefix, _fdOffsets(messages, exists))
        cuts = _cuts(data, stream)
        extra = data.draw(st.binary(max_size=20), label="extra")
        changeAt = data.draw(st.integers(0, len(cuts) + 1), label="session changes")
        EXAMPLES["StreamServeFuzzTests.test_streams"] += 1
        healthy = prefix and state != "later-failed"
        quiet = state in ("complete", "later-complete")

        slot = SessionSlot()
        session = _storedSession(slot, complete=state == "complete")
        if state == "failed":
            session.fail("the link broke")
        pipes = _Pipes(len(offsets), passRead=False)
        protocol = StreamServeProtocol(slot, MemoryReactorClock(), Limits(), lambda: None)
        transport = _Transport()
        logs = _LogCapture().start()
        try:
            protocol.makeConnection(transport)
            for step, (first, past, piece) in enumerate(_withFds(stream, cuts, offsets)):
                for fd in pipes.passed[first:past]:
                    pipes.delivered.append(fd)
                    protocol.fileDescriptorReceived(fd)
                protocol.dataReceived(piece)
                self._check(protocol, transport, logs, healthy, quiet)
                if step == changeAt:
                    self._change(session, state)
                    self._check(protocol, transport, logs, healthy, quiet)
            self._change(session, state)
            self._check(protocol, transport, logs, healthy, quiet)
            closedBefore = transport.closing
            protocol.dataReceived(extra)
            self._check(protocol, transport, logs, healthy and not extra, quiet)
            if closedBefore:
                self.assertTrue(transport.closing)
            _flood(self, protocol, transport)
            replies = transport.value()
            if healthy and stream == valid:
                self.assertEqual(replies, b"".join(streamReply(e) for e in exists))
            protocol.connectionLost(Failure(ConnectionDone()))
            self._drain(protocol, pipes)
            self.assertEqual(pipes.leaked(), [], "pipes passed to the protocol were left open")
        finally:
            logs.stop()
            pipes.closeAll()

    def _change(self, session: Session, state: str) -> None:
        """
        A session still receiving completes or fails.
        """
        if state == "later-complete" and not session.final:
            session.complete()
        elif state == "later-failed":
            session.fail("the link broke")

    def _drain(self, protocol: StreamServeProtocol, pipes: _Pipes) -> None:
        """
        The reactor writes every pipe still being written to its end; each
        holds exactly one stored image.
        """
        for writer in list(protocol._writers):
            readEnd = pipes.other[writer.fileno()]
            why = None
            while why is None:
                why = writer.doWrite()
            writer.connectionLost(Failure(why))
            os.set_blocking(readEnd, False)
            try:
                content = os.read(readEnd, 1 << 16)
            except BlockingIOError:
                content = b""
            self.assertIn(content, set(_STORED.values()))

    def _check(
        self,
        protocol: StreamServeProtocol,
        transport: _Transport,
        logs: _LogCapture,
        healthy: bool,
        quiet: bool = True,
    ) -> None:
        """
        Properties (b) and (c); C{quiet} when no request may be answered
        "does not exist" because the session failed (a warning).
        """
        if not (protocol._framer.awaitingDecision and not transport.closing):
            self.assertLessEqual(protocol._framer.buffered, _BOUND)
        replies = transport.value()
        self.assertEqual(len(replies) % 6, 0)
        self.assertLessEqual({replies[i : i + 6] for i in range(0, len(replies), 6)}, _REPLIES)
        _assertOutcome(self, transport, logs, healthy=healthy, quiet=quiet)



class RegressionTests(SynchronousTestCase):
    """
    The smallest inputs found by the properties above that broke them, kept
    as plain tests.
    """

    def _proxyLink(self) -> tuple[ProxyLinkProtocol, ProxySession, _Transport]:
        """
        @return: A connected link protocol, its session and transport.
        """
        session = ProxySession("s", Clock().seconds)
        protocol = ProxyLinkFactory(session, MemoryReactorClock()).buildProtocol(None)
        transport = _Transport()
        protocol.makeConnection(transport)
        return protocol, session, transport

    def test_proxyLinkAcceptTwice(self) -> None:
        """
        A cache that sends Accept twice fails the session with a logged
        reason and the link closes; nothing is raised out of
        C{dataReceived}.
        """
        protocol, session, transport = self._proxyLink()
        logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        protocol.dataReceived(_ACCEPT + _ACCEPT)
        self.assertTrue(session.over)
        self.assertTrue(transport.closing)
        self.assertTrue([e for e in logs if e["log_level"] == LogLevel.error and e.get("reason")])
        self.successResultOf(session.ready)
        self.failureResultOf(session.result, SessionError)

    def test_proxyLinkAcceptAfterRefuse(self) -> None:
        """
        An Accept after a Refuse (the session already failed) raises nothing
        out of C{dataReceived}.
        """
        protocol, session, transport = self._proxyLink()
        protocol.dataReceived(_cacheFrame(refuse=link_pb2.Refuse(reason="busy")) + _ACCEPT)
        self.assertTrue(session.over)
        self.assertTrue(transport.closing)
        self.failureResultOf(session.ready, SessionError)
        self.failureResultOf(session.result, SessionError)

    def test_proxyLinkDoneOkTwice(self) -> None:
        """
        A cache that confirms the final handshake twice raises nothing out
        of C{dataReceived}: the session stays complete and the link closes.
        """
        protocol, session, transport = self._proxyLink()
        protocol.dataReceived(_ACCEPT)
        session.finish()
        protocol.dataReceived(_DONE_OK + _DONE_OK)
        self.assertEqual(self.successResultOf(session.result).images, 0)
        self.assertTrue(transport.closing)

    def test_serveBytesAfterBadNameNotHeld(self) -> None:
        """
        After a restore request with a bad image name closes the connection,
        whatever else arrives is dropped, not buffered.
        """
        slot = SessionSlot()
        _storedSession(slot, complete=True)
        protocol = StreamServeProtocol(slot, MemoryReactorClock(), Limits(), lambda: None)
        transport = _Transport()
        protocol.makeConnection(transport)
        protocol.dataReceived(_request("a/b"))
        self.assertTrue(transport.closing)
        protocol.dataReceived(_FLOOD)
        protocol.dataReceived(_FLOOD)
        self.assertLessEqual(protocol._framer.buffered, _BOUND)
        protocol.connectionLost(Failure(ConnectionDone()))
