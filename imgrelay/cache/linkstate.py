# -*- test-case-name: tests.cache.test_linkstate -*-
"""
What the cache knows of one link, without I/O: L{CacheLinkState} takes the
proxy's framed messages and payload bytes, turns them into verified images
in the session the hello claims, and returns the answers to send back. It
never sees a transport, a reactor or a clock (the time comes in as a
callable, for rates only).
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import attrs
from twisted.logger import Logger

from imgrelay.cache.memory import MemoryBound
from imgrelay.cache.unpack import PackedChunk
from imgrelay.core.errors import ProtocolError, SessionError
from imgrelay.core.integrity import RunningChecksum, manifestDigest
from imgrelay.core.interfaces import ISessionClaims
from imgrelay.core.limits import Limits
from imgrelay.core.names import checkId, checkImageName
from imgrelay.core.store import Image, ImageData, Session, SessionState
from imgrelay.observe.logs import logsImage, rate
from imgrelay.wire.framing import HeaderReceived, PayloadChunk
from imgrelay.wire.codecs import NAMES, RAW, available
from imgrelay.wire.link import MAX_CHUNK, VERDICT_VERSION, VERSION, CacheMessage
from imgrelay.wire.pb import link_pb2

#: The most images open at once on one link (CRIU keeps a handful open; an
#: open image costs memory before it brings any data).
MAX_OPEN_IMAGES = 1024


@attrs.define
class _Incoming:
    """
    An image open on the link: its snapshot and name, when it was opened
    (for its rate), its bytes so far, and their size and CRC-32C.
    """

    snapshotId: str
    name: str
    opened: float
    data: ImageData = attrs.Factory(ImageData)
    checksum: RunningChecksum = attrs.Factory(RunningChecksum)


class CacheLinkState:
    """
    What the cache knows of one link, and its answers.

    L{received} takes each framing event; it returns the messages to send
    back, and raises L{ProtocolError}, L{SessionError} or
    L{imgrelay.core.names.BadName} for input that ends the link. L{failed}
    then says what to tell the proxy.

    @ivar session: The session this link fills, once the proxy said hello.
    """

    log = Logger()

    def __init__(
        self, slot: ISessionClaims, clock: Callable[[], float] = time.monotonic, verbose: bool = False,
        limits: Limits = Limits(), bound: Optional[MemoryBound] = None,
        encodings: Optional[Sequence[int]] = None,
    ) -> None:
        """
        @param slot: Where sessions are claimed.
        @param clock: The time, for rates.
        @param verbose: Log every image, not only large ones.
        @param limits: Images and bytes a session may bring.
        @param bound: The cache's memory bound, charged with every image
            byte received.
        @param encodings: The chunk encodings it accepts, offered in its
            accept; all it can decode by default.
        """
        self.encodings = list(available() if encodings is None else encodings)
        self.bound = bound
        self.verbose = verbose
        self.limits = limits
        self._received = 0
        self._slot = slot
        self._clock = clock
        self.session: Optional[Session] = None
        self._open: dict[int, _Incoming] = {}
        self._seen: set[int] = set()
        self._chunkTarget: Optional[_Incoming] = None
        self._pendingView: Optional[memoryview] = None
        self._packed: Optional[PackedChunk] = None
        self._unpacking: Optional[PackedChunk] = None
        self._decoding: Optional[PackedChunk] = None
        self._finished = False

    @property
    def refused(self) -> bool:
        """
        Whether the session failed on this link (an image was refused).
        """
        return self.session is not None and self.session.failure is not None

    def received(
        self, event: HeaderReceived[link_pb2.ProxyMessage] | object
    ) -> list[CacheMessage]:
        """
        Handle one framing event.

        @return: The messages to send back, in order.
        """
        if isinstance(event, PayloadChunk) and self._packed is not None:
            self._packed.add(event.data)
            self._packedProgress()
            return []
        if isinstance(event, PayloadChunk):
            target = self._chunkTarget
            assert target is not None and self.session is not None
            target.data.append(event.data)
            target.checksum.update(event.data)
            self._arrived(len(event.data))
            return []
        if not isinstance(event, HeaderReceived):
            return []
        message = event.message
        kind = message.WhichOneof("kind")
        if self.session is None:
            if kind != "hello":
                raise ProtocolError(f"expected hello, got {kind}")
            return [self._onHello(message.hello)]
        if self._finished:
            raise ProtocolError(f"{kind} after the final handshake")
        handlers: dict[str, Callable[[object], list[CacheMessage]]] = {
            "open": self._onOpen,  # type: ignore[dict-item]
            "chunk": self._onChunk,  # type: ignore[dict-item]
            "close": self._onClose,  # type: ignore[dict-item]
            "done": self._onDone,  # type: ignore[dict-item]
            "abort": self._onAbort,  # type: ignore[dict-item]
            "snapshot": self._onSnapshot,  # type: ignore[dict-item]
        }
        handler = handlers.get(kind or "")
        if handler is None:
            raise ProtocolError(f"unexpected {kind} during a session")
        return handler(getattr(message, kind or ""))

    def chunkTarget(self, wanted: int) -> memoryview:
        """
        Where the next bytes of the current chunk's payload go: free space
        at the end of its image, to receive into and then L{chunkFilled}.

        @param wanted: How many payload bytes are still to come.
        """
        if self._packed is not None:
            return self._packed.space(wanted)
        target = self._chunkTarget
        assert target is not None
        self._pendingView = target.data.writable(wanted)
        return self._pendingView

    def chunkFilled(self, n: int) -> None:
        """
        C{n} bytes were received at the start of the last L{chunkTarget}.
        """
        if self._packed is not None:
            self._packed.received(n)
            self._packedProgress()
            return
        target = self._chunkTarget
        view = self._pendingView
        assert target is not None and view is not None and self.session is not None
        self._pendingView = None
        target.checksum.update(view[:n])
        target.data.commit(n)
        self._arrived(n)

    def _packedProgress(self) -> None:
        packed = self._packed
        assert packed is not None
        if packed.complete:
            self._packed = None
            self._unpacking = packed

    @property
    def unpackPending(self) -> bool:
        """
        Whether an encoded chunk arrived whole and awaits L{takeUnpack}: the
        stream must stop there until it is L{unpacked}.
        """
        return self._unpacking is not None

    def takeUnpack(self) -> Optional[tuple[int, bytes, int]]:
        """
        @return: The chunk to decode, as C{(encoding, payload, size)}, once;
            then L{unpacked} with its bytes.
        """
        packed, self._unpacking = self._unpacking, None
        if packed is None:
            return None
        self._decoding = packed
        return packed.encoding, bytes(packed.payload), packed.size

    def unpacked(self, data: bytes) -> None:
        """
        The chunk L{takeUnpack} gave decoded to C{data}, its image's next
        bytes.
        """
        packed, self._decoding = self._decoding, None
        assert packed is not None and len(data) == packed.size and self.session is not None
        packed.target.data.append(data)
        packed.target.checksum.update(data)
        self._arrived(len(data))

    def _arrived(self, n: int) -> None:
        session = self.session
        assert session is not None
        session.countReceived(n)
        if self.bound is not None:
            self.bound.charge(session, n)

    def openProgress(self) -> list[link_pb2.ImageProgress]:
        """
        @return: Each image open on the link and how many of its bytes are
            here, for a resuming proxy's log.
        """
        return [link_pb2.ImageProgress(image=i, bytes=incoming.checksum.size) for i, incoming in self._open.items()]

    def _sessionEnded(self, session: Session) -> None:
        if session.state is SessionState.FAILED:
            # Its half-received images will never be served: free them.
            self._open.clear()
            self._chunkTarget = None
            self._pendingView = None
            self._packed = self._unpacking = self._decoding = None

    def _onHello(self, hello: link_pb2.Hello) -> CacheMessage:
        if hello.version not in (VERSION, VERDICT_VERSION):
            raise ProtocolError(
                f"link protocol version {hello.version} is not supported "
                f"(this cache speaks versions {VERSION} and {VERDICT_VERSION})"
            )
        if not hello.session:
            raise ProtocolError("hello names no session")
        checkId("session name", hello.session)
        session = self._slot.claim(hello.session)
        assert isinstance(session, Session)
        session.addFinalObserver(self._sessionEnded)
        self.session = session
        self.log.info("session {session}: proxy connected", session=hello.session)
        return CacheMessage(accept=link_pb2.Accept(encodings=self.encodings))  # type: ignore[arg-type]

    def _image(self, imageId: int) -> _Incoming:
        incoming = self._open.get(imageId)
        if incoming is None:
            raise ProtocolError(f"image {imageId} is not open")
        return incoming

    def _onOpen(self, message: link_pb2.ImageOpen) -> list[CacheMessage]:
        assert self.session is not None
        if message.image in self._seen:
            raise ProtocolError(f"image id {message.image} used twice")
        if len(self._open) >= MAX_OPEN_IMAGES:
            raise ProtocolError(f"more than {MAX_OPEN_IMAGES} images open at once")
        checkImageName(message.name, self.limits.maxNameLength)
        checkId("snapshot id", message.snapshot_id)
        key = (message.snapshot_id, message.name)
        if any((i.snapshotId, i.name) == key for i in self._open.values()):
            raise SessionError(
                f"image {message.name!r} of snapshot {message.snapshot_id!r} is already being written"
            )
        earlier = self.session.images.get(key)
        if earlier is None and len(self.session.images) + len(self._open) >= self.limits.maxImages:
            raise SessionError(f"more than {self.limits.maxImages} images in the session (--max-images)")
        if message.mode == link_pb2.CREATE and earlier is not None:
            raise SessionError(
                f"image {message.name!r} written twice in snapshot {message.snapshot_id!r}"
            )
        if message.mode not in (link_pb2.CREATE, link_pb2.REPLACE, link_pb2.APPEND):
            raise ProtocolError(f"unknown open mode {message.mode}")
        incoming = _Incoming(message.snapshot_id, message.name, self._clock())
        if message.mode == link_pb2.APPEND and earlier is not None:
            incoming.data = ImageData.continuing(earlier.data)
            incoming.checksum = RunningChecksum(earlier.size, earlier.crc)
        self._seen.add(message.image)
        self._open[message.image] = incoming
        self.session.arriving(*key)
        return []

    def _onSnapshot(self, message: link_pb2.SnapshotPush) -> list[CacheMessage]:
        assert self.session is not None
        checkId("snapshot id", message.snapshot_id)
        self.session.pushSnapshot(message.snapshot_id)
        return []

    def _onChunk(self, message: link_pb2.Chunk) -> list[CacheMessage]:
        target = self._image(message.image)
        size = message.length
        if message.encoding != RAW:
            if message.encoding not in self.encodings:
                name = NAMES.get(message.encoding, str(message.encoding))
                raise ProtocolError(f"chunk encoded with {name}, which this cache did not offer")
            if message.size > MAX_CHUNK:
                raise ProtocolError(f"encoded chunk of {message.size} bytes is over {MAX_CHUNK}")
            size = message.size
            self._chunkTarget = None
            self._packed = PackedChunk(target, message.encoding, size, bytearray(message.length))
            self._packedProgress()
        else:
            self._chunkTarget = target
        self._received += size
        assert self.session is not None
        self.session.linkBytes += message.length
        if self._received > self.limits.maxSessionBytes:
            raise SessionError(
                f"more than {self.limits.maxSessionBytes} bytes in the session (--max-session-bytes)"
            )
        return []

    def _onClose(self, message: link_pb2.ImageClose) -> list[CacheMessage]:
        assert self.session is not None
        incoming = self._image(message.image)
        del self._open[message.image]
        if self._chunkTarget is incoming:
            self._chunkTarget = None
        incoming.data.close()
        got = incoming.checksum
        problem = None
        if got.size != message.size:
            problem = f"size mismatch: proxy sent {message.size} bytes, cache received {got.size}"
        elif got.crc != message.crc32c:
            problem = (
                f"checksum mismatch: proxy's CRC-32C {message.crc32c:08x}, "
                f"received bytes' {got.crc:08x}"
            )
        if problem is not None:
            reason = f"image {incoming.name!r} refused: {problem}"
            self.log.error("session {session}: {reason}", session=self.session.name, reason=reason)
            self.session.fail(reason, "checksum")
            return [CacheMessage(image_refused=link_pb2.ImageRefused(image=message.image, reason=reason))]
        seconds = self._clock() - incoming.opened
        self.session.addVerified(Image(incoming.snapshotId, incoming.name, incoming.data, got.crc))
        if logsImage(got.size, self.verbose):
            self.log.info(
                "session {session}: image {name} verified, {size} bytes in {seconds:.3f} s ({rate:.1f} MB/s)",
                session=self.session.name,
                name=incoming.name,
                snapshot=incoming.snapshotId,
                size=got.size,
                seconds=seconds,
                rate=rate(got.size, seconds),
            )
        return [CacheMessage(ack=link_pb2.ImageAck(image=message.image))]

    def _onDone(self, message: link_pb2.Done) -> list[CacheMessage]:
        session = self.session
        assert session is not None
        images = list(session.images.values())
        total = sum(i.size for i in images)
        if self._open:
            names = sorted(i.name for i in self._open.values())
            raise SessionError(f"done while {len(names)} images are still open: {', '.join(names)}")
        if message.images != len(images):
            raise SessionError(f"proxy sent {message.images} images, cache verified {len(images)}")
        if message.bytes != total:
            raise SessionError(f"proxy sent {message.bytes} bytes, cache verified {total}")
        if message.manifest_sha256 != manifestDigest(i.manifestEntry() for i in images):
            raise SessionError("manifest digest differs between proxy and cache")
        self._finished = True
        session.complete()
        seconds = (session.ended or 0.0) - (session.started or 0.0)
        self.log.info(
            "session {session}: complete, {images} images, {bytes} bytes in {seconds:.3f} s ({rate:.1f} MB/s)",
            session=session.name,
            images=len(images),
            bytes=total,
            seconds=seconds,
            rate=rate(total, seconds),
        )
        return [CacheMessage(done_ok=link_pb2.DoneOk())]

    def _onAbort(self, message: link_pb2.Abort) -> list[CacheMessage]:
        raise SessionError(f"proxy aborted the session: {message.reason or 'no reason given'}")

    def failed(self, reason: str) -> Optional[CacheMessage]:
        """
        The link ends on an error: fail the session, if any.

        @param reason: What went wrong.
        @return: The message that tells the proxy, if one is owed.
        """
        session = self.session
        if session is None:
            self.log.error("link refused: {reason}", reason=reason)
            return CacheMessage(refuse=link_pb2.Refuse(reason=reason))
        if session.final:
            self.log.error("session {session}: link error after the end: {reason}",
                           session=session.name, reason=reason)
            return None
        self.log.error("session {session} failed: {reason}", session=session.name, reason=reason)
        session.fail(reason, "protocol")
        return CacheMessage(failed=link_pb2.SessionFailed(reason=reason))

    def lost(self, reason: str) -> None:
        """
        The link closed for good; a session it had not completed fails.
        """
        session = self.session
        if session is not None and not session.final:
            self.log.error("session {session} failed: {reason}", session=session.name, reason=reason)
            session.fail(reason)
