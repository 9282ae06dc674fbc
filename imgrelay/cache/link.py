# -*- test-case-name: tests.cache.test_link -*-
"""
The cache's end of the link: a sans-IO state machine that turns the proxy's
messages into verified images and answers, and the thin protocol around it.
"""

from __future__ import annotations

import hmac
import time
from typing import Any, Callable, Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.core.errors import ProtocolError, SessionError
from imgrelay.wire.framing import FramingError, HeaderReceived, PayloadChunk
from imgrelay.core.integrity import RunningChecksum, manifestDigest
from imgrelay.transport.keepalive import watchPeer
from imgrelay.transport.peer import peerOf
from imgrelay.core.limits import Limits
from imgrelay.observe.logs import logsImage, rate
from imgrelay.cache.memory import IBoundReader, MemoryBound
from imgrelay.wire.link import VERSION, CacheMessage, frame, helloFramer, proxyMessageFramer
from imgrelay.core.names import BadName, checkId, checkImageName
from imgrelay.wire.pb import link_pb2
from imgrelay.transport.receiver import IPayloadReceiver, SocketReceiver
from imgrelay.core.interfaces import ISessionClaims
from imgrelay.core.store import Image, ImageData, Session, SessionState

#: How much the cache reads from the link at once.
READ_SIZE = 1 << 20

#: The most images open at once on one link (CRIU keeps a handful open; an
#: open image costs memory before it brings any data).
MAX_OPEN_IMAGES = 1024


@attrs.define
class _Incoming:
    snapshotId: str
    name: str
    opened: float
    data: ImageData = attrs.Factory(ImageData)
    checksum: RunningChecksum = attrs.Factory(RunningChecksum)


class CacheLinkState:
    """
    What the cache knows of one link, and its answers.

    L{received} takes each framing event; it returns the messages to send
    back, and raises L{ProtocolError}, L{SessionError}, L{BadName} for input
    that ends the link. L{failed} then says what to tell the proxy.

    @ivar session: The session this link fills, once the proxy said hello.
    """

    log = Logger()

    def __init__(
        self, slot: ISessionClaims, clock: Callable[[], float] = time.monotonic, verbose: bool = False,
        limits: Limits = Limits(), bound: Optional[MemoryBound] = None,
    ) -> None:
        """
        @param slot: Where sessions are claimed.
        @param clock: The time, for rates.
        @param verbose: Log every image, not only large ones.
        @param limits: Images and bytes a session may bring.
        @param bound: The cache's memory bound, charged with every image
            byte received.
        """
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
        target = self._chunkTarget
        assert target is not None
        self._pendingView = target.data.writable(wanted)
        return self._pendingView

    def chunkFilled(self, n: int) -> None:
        """
        C{n} bytes were received at the start of the last L{chunkTarget}.
        """
        target = self._chunkTarget
        view = self._pendingView
        assert target is not None and view is not None and self.session is not None
        self._pendingView = None
        target.checksum.update(view[:n])
        target.data.commit(n)
        self._arrived(n)

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

    def _onHello(self, hello: link_pb2.Hello) -> CacheMessage:
        if hello.version != VERSION:
            raise ProtocolError(
                f"link protocol version {hello.version} is not supported "
                f"(this cache speaks version {VERSION})"
            )
        if not hello.session:
            raise ProtocolError("hello names no session")
        checkId("session name", hello.session)
        session = self._slot.claim(hello.session)
        assert isinstance(session, Session)
        session.addFinalObserver(self._sessionEnded)
        self.session = session
        self.log.info("session {session}: proxy connected", session=hello.session)
        return CacheMessage(accept=link_pb2.Accept())

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
        self._chunkTarget = self._image(message.image)
        self._received += message.length
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


#: How long the cache keeps a session whose link broke, for the proxy to
#: resume it: longer than the proxy's own 60 s, since either end may notice
#: a dead peer up to a minute after the other (see L{imgrelay.transport.keepalive}).
DEFAULT_RESUME_TIMEOUT = 120.0


class CacheStream:
    """
    One session's stream as the cache reads it, across the links that
    carry it: the parser, the session's state, and how much of the stream
    has been taken.

    @ivar taken: Bytes of the session stream parsed so far.
    @ivar link: The link carrying it now, if any.
    """

    def __init__(self, state: CacheLinkState, token: bytes, window: int) -> None:
        """
        @param state: The session's state (it has taken the hello).
        @param token: What a resuming link must present.
        @param window: The proxy's window: progress is reported sixteen times
            per window.
        """
        self.state = state
        self.framer = proxyMessageFramer(state.limits.maxHeaderSize)
        self.token = token
        self.taken = 0
        self._reported = 0
        self._step = max(window // 16, 1 << 20) if window else DEFAULT_PROGRESS_STEP
        self.link: Optional[CacheLinkProtocol] = None
        self.expiry: Optional[IDelayedCall] = None

    @property
    def session(self) -> Session:
        """
        @return: The session this stream fills.
        """
        assert self.state.session is not None
        return self.state.session

    def progress(self) -> Optional[CacheMessage]:
        """
        @return: A progress report, if enough was taken since the last one.
        """
        if self.taken - self._reported < self._step:
            return None
        self._reported = self.taken
        return CacheMessage(progress=link_pb2.Progress(received=self.taken))


#: Progress is reported this often when the proxy names no window.
DEFAULT_PROGRESS_STEP = 8 << 20


@implementer(IPayloadReceiver, IBoundReader)
class CacheLinkProtocol(Protocol, TimeoutMixin):
    """
    One link from a proxy: its hello starts a session or resumes one (see
    L{CacheLinkFactory}); the rest is that session's stream.
    """

    log = Logger()

    def __init__(
        self, slot: ISessionClaims, clock: Callable[[], float] = time.monotonic, reactor: Any = None,
        verbose: bool = False, limits: Limits = Limits(), bound: Optional[MemoryBound] = None,
    ) -> None:
        """
        @param slot: Where sessions are claimed.
        @param clock: The time, for rates.
        @param reactor: Where a plain TCP link's socket is read; the global
            reactor by default.
        @param verbose: Log every image, not only large ones.
        @param limits: Images and bytes a session may bring.
        @param bound: The cache's memory bound, which may hold this link.
        """
        self._bound = bound
        self._paused = False
        self._hello = helloFramer(limits.maxHeaderSize)
        self._slot = slot
        self._clock = clock
        self._verbose = verbose
        self._limits = limits
        self.stream: Optional[CacheStream] = None
        self._closing = False
        self._reactor = reactor
        self._receiver: Optional[SocketReceiver] = None
        #: The state of a link whose hello was refused (for L{failed}).
        self._refusal = CacheLinkState(slot, clock, verbose, limits, bound)

    @property
    def state(self) -> CacheLinkState:
        """
        @return: The state of the session this link carries (before any
            hello, a state with no session).
        """
        return self.stream.state if self.stream is not None else self._refusal

    def _transport(self) -> ITransport:
        assert self.transport is not None, "not connected"
        return self.transport

    def connectionMade(self) -> None:
        """
        On a plain TCP link, receive payloads straight into the images'
        memory; on any other transport, read in large pieces.
        """
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        assert self.transport is not None
        watchPeer(self.transport)
        self._receiver = SocketReceiver.forTransport(self.transport, reactor, self)
        if self._receiver is None and ITCPTransport.providedBy(self.transport):
            self.transport.bufferSize = READ_SIZE  # type: ignore[attr-defined]
        factory = self.factory
        if isinstance(factory, CacheLinkFactory) and factory.helloTimeout is not None:
            self.callLater = factory._timers().callLater  # type: ignore[method-assign,assignment]
            self.setTimeout(factory.helloTimeout)

    def timeoutConnection(self) -> None:
        """
        No hello came in time (L{TimeoutMixin}).
        """
        if self.stream is None and not self._closing:
            self._fail(f"no hello within {self.timeOut:g} s (--idle-timeout)")

    # IBoundReader

    def pauseReading(self) -> None:
        """
        See L{IBoundReader.pauseReading}.
        """
        if self._paused:
            return
        self._paused = True
        if self._receiver is not None:
            self._receiver.stopReading()
        else:
            self._transport().pauseProducing()  # type: ignore[attr-defined]

    def resumeReading(self) -> None:
        """
        See L{IBoundReader.resumeReading}.
        """
        if not self._paused:
            return
        self._paused = False
        if self._receiver is not None:
            if self._receiver.connected:
                self._receiver.startReading()
        else:
            self._transport().resumeProducing()  # type: ignore[attr-defined]

    def dropSession(self, reason: str) -> None:
        """
        See L{IBoundReader.dropSession}.
        """
        if not self._closing:
            self._fail(reason)

    def carries(self) -> Optional[Session]:
        """
        See L{IBoundReader.carries}.
        """
        stream = self.stream
        return stream.state.session if stream is not None and stream.link is self else None

    @property
    def _attached(self) -> bool:
        return self.stream is not None and self.stream.link is self and not self._closing

    def payloadTarget(self) -> Optional[memoryview]:
        """
        See L{IPayloadReceiver.payloadTarget}: inside a chunk, the free end
        of its image.
        """
        if not self._attached:
            return None
        assert self.stream is not None
        remaining = self.stream.framer.payloadRemaining
        return self.stream.state.chunkTarget(remaining) if remaining else None

    def payloadRemaining(self) -> int:
        """
        See L{IPayloadReceiver.payloadRemaining}.
        """
        if not self._attached:
            return 0
        assert self.stream is not None
        return self.stream.framer.payloadRemaining

    def payloadReceived(self, n: int) -> None:
        """
        See L{IPayloadReceiver.payloadReceived}.
        """
        stream = self.stream
        assert stream is not None
        stream.state.chunkFilled(n)
        stream.framer.skipPayload(n)
        stream.taken += n
        self._reportProgress()

    def receiverLost(self, reason: Failure) -> None:
        """
        See L{IPayloadReceiver.receiverLost}: the proxy closed the link, or
        it broke; close our side too.
        """
        assert self.transport is not None
        if reason.check(ConnectionDone):
            self._transport().loseConnection()
        else:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        """
        Read the hello, then feed the session's stream; end the link on any
        error.
        """
        if self._closing:
            return
        try:
            if self.stream is None:
                self._helloReceived(data)
            elif self.stream.link is self:
                self._feed(data)
        except (FramingError, ProtocolError, SessionError, BadName) as e:
            self._fail(str(e))

    def _helloReceived(self, data: bytes) -> None:
        events = list(self._hello.feed(data))
        if not events:
            return
        event = events[0]
        assert isinstance(event, HeaderReceived)
        message = event.message
        kind = message.WhichOneof("kind")
        if kind != "hello":
            raise ProtocolError(f"expected hello, got {kind}")
        rest = self._hello.drain()
        self.setTimeout(None)
        factory = self.factory if isinstance(self.factory, CacheLinkFactory) else None
        hello = message.hello
        if hello.resume or (factory is not None and factory.knows(hello)):
            # A resume, or a first hello again because our accept was lost.
            if factory is None:
                raise ProtocolError("this cache cannot resume sessions")
            stream, replies = factory.resume(hello, self)
        else:
            state = CacheLinkState(self._slot, self._clock, self._verbose, self._limits, self._bound)
            replies = state.received(event)
            stream = CacheStream(state, hello.resume_token, hello.window)
            if factory is None:
                stream.link = self
            else:
                factory.started(stream, self)
        self.stream = stream
        if self._bound is not None:
            # Only now does this link bring a session's bytes; the bound
            # holds it, or not, by that session (a link held before its
            # hello could never resume the oldest session).
            self._bound.addReader(self)
        for reply in replies:
            self._transport().write(frame(reply))
        if rest:
            self._feed(rest)

    def _feed(self, data: bytes) -> None:
        stream = self.stream
        assert stream is not None
        for event in stream.framer.feed(data):
            for reply in stream.state.received(event):
                self._transport().write(frame(reply))
            if self._closing:
                # The memory bound dropped the session.
                return
            if stream.state.refused:
                # An image was refused: the session is over.
                self._closing = True
                self._transport().loseConnection()
                return
        stream.taken += len(data)
        self._reportProgress()

    def _reportProgress(self) -> None:
        assert self.stream is not None
        message = self.stream.progress()
        if message is not None:
            self._transport().write(frame(message))

    def _fail(self, reason: str) -> None:
        self._closing = True
        message = self.state.failed(reason)
        if message is not None:
            self._transport().write(frame(message))
        self._transport().loseConnection()

    def replaced(self) -> None:
        """
        Another link resumed this one's session: drop this one.
        """
        self._closing = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        A session still receiving waits for the proxy to resume it. A link
        lost before its hello (a TLS handshake refused, a peer that is not
        a proxy) is logged with the reason.
        """
        if self.stream is None and not self._closing:
            self.log.warn(
                "link from {peer} closed before its hello: {reason}",
                peer=peerOf(self.transport), reason=reason.getErrorMessage(),
            )
        self.setTimeout(None)
        if self._receiver is not None:
            self._receiver.close()
        if self._bound is not None:
            self._bound.removeReader(self)
        if isinstance(self.factory, CacheLinkFactory):
            self.factory.linkClosed(self, reason)
        elif self.stream is not None and self.stream.link is self:
            self.stream.state.lost(f"link lost before the session completed ({reason.getErrorMessage()})")


class CacheLinkFactory(Factory):
    """
    Accept links from proxies into sessions they claim (an images
    directory's L{imgrelay.core.store.SessionSlot}, or a registry), and keep each session
    whose link broke for a while, for its proxy to resume it.
    """

    log = Logger()

    def __init__(
        self, slot: ISessionClaims, clock: Callable[[], float] = time.monotonic, reactor: Any = None,
        verbose: bool = False, limits: Limits = Limits(), resumeTimeout: float = DEFAULT_RESUME_TIMEOUT,
        bound: Optional[MemoryBound] = None, helloTimeout: Optional[float] = None,
    ) -> None:
        """
        @param slot: Where sessions are claimed.
        @param clock: The time, for rates.
        @param reactor: Where sockets are read and timers run; the global
            reactor by default.
        @param verbose: Log every image, not only large ones.
        @param limits: Images and bytes a session may bring.
        @param resumeTimeout: Seconds a session whose link broke waits for
            its proxy to resume it before it fails.
        @param bound: The cache's memory bound; none by default.
        @param helloTimeout: Seconds a new link may take to say hello, or
            None for no limit.
        """
        self.helloTimeout = helloTimeout
        self.bound = bound if bound is not None else MemoryBound()
        self.limits = limits
        self.slot = slot
        self.clock = clock
        self.reactor = reactor
        self.verbose = verbose
        self.resumeTimeout = resumeTimeout
        self.links: set[CacheLinkProtocol] = set()
        self.streams: dict[str, CacheStream] = {}
        self._idleWaiters: list[Deferred[None]] = []

    def _timers(self) -> IReactorTime:
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor
        return reactor

    def started(self, stream: CacheStream, link: CacheLinkProtocol) -> None:
        """
        C{link} started a new session on C{stream}.
        """
        old = self.streams.pop(stream.session.name or "", None)
        if old is not None:
            self._forget(old)
        self.streams[stream.session.name or ""] = stream
        stream.link = link

    def knows(self, hello: link_pb2.Hello) -> bool:
        """
        @return: Whether C{hello} names a session kept here under the token
            it presents.
        """
        stream = self.streams.get(hello.session)
        return stream is not None and bool(stream.token) and hmac.compare_digest(stream.token, hello.resume_token)

    def resume(self, hello: link_pb2.Hello, link: CacheLinkProtocol) -> tuple[CacheStream, list[CacheMessage]]:
        """
        C{link} resumes the session its hello names.

        @return: The session's stream and the answers to send.
        @raise ProtocolError: If there is no such session to resume here.
        @raise SessionError: If the session failed.
        """
        checkId("session name", hello.session)
        stream = self.streams.get(hello.session)
        if stream is None:
            raise ProtocolError(
                f"no session {hello.session!r} to resume here (it ended, expired, "
                "or this cache restarted)"
            )
        if not stream.token or not hmac.compare_digest(stream.token, hello.resume_token):
            raise ProtocolError(f"wrong resume token for session {hello.session!r}")
        session = stream.session
        if session.state is SessionState.FAILED:
            raise ProtocolError(f"session {hello.session!r} failed: {session.failure}")
        if stream.expiry is not None and stream.expiry.active():
            stream.expiry.cancel()
        stream.expiry = None
        old, stream.link = stream.link, link
        if old is not None:
            self.log.warn(
                "session {session}: a new link resumes it; dropping the old one", session=session.name,
            )
            old.replaced()
        self.log.info(
            "session {session}: proxy resumed the link at byte {taken} of the session stream",
            session=session.name, taken=stream.taken,
        )
        replies = [
            CacheMessage(accept=link_pb2.Accept(received=stream.taken, open_images=stream.state.openProgress()))
        ]
        if session.state is SessionState.COMPLETE:
            # The proxy did not get our confirmation.
            replies.append(CacheMessage(done_ok=link_pb2.DoneOk()))
        return stream, replies

    def linkClosed(self, link: CacheLinkProtocol, reason: Failure) -> None:
        """
        C{link} closed: a session it was carrying waits for a resume.
        """
        self.links.discard(link)
        stream = link.stream
        if stream is not None and stream.link is link:
            stream.link = None
            session = stream.session
            if session.state is SessionState.COMPLETE and reason.check(ConnectionDone):
                # The proxy closed after our confirmation: nothing to resume.
                self._forget(stream)
            elif self.streams.get(session.name or "") is stream:
                if not session.final:
                    self.log.warn(
                        "session {session}: link lost ({reason}); waiting {timeout:g} s for the proxy to resume it",
                        session=session.name, reason=reason.getErrorMessage(), timeout=self.resumeTimeout,
                    )
                why = reason.getErrorMessage()
                stream.expiry = self._timers().callLater(self.resumeTimeout, self._expire, stream, why)
        if not self.links:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def _expire(self, stream: CacheStream, why: str) -> None:
        stream.expiry = None
        self._forget(stream)
        stream.state.lost(
            f"the proxy did not resume the session within {self.resumeTimeout:g} s "
            f"after its link was lost ({why})"
        )

    def _forget(self, stream: CacheStream) -> None:
        if stream.expiry is not None and stream.expiry.active():
            stream.expiry.cancel()
        stream.expiry = None
        name = stream.session.name or ""
        if self.streams.get(name) is stream:
            del self.streams[name]

    def abortAll(self) -> None:
        """
        Close every link at once (the cache is shutting down); their
        sessions not yet complete fail, with those waiting for a resume.
        """
        for link in list(self.links):
            link.transport.abortConnection()  # type: ignore[union-attr]
        for stream in list(self.streams.values()):
            self._forget(stream)
            stream.state.lost("the cache is shutting down")

    def whenIdle(self) -> Deferred[None]:
        """
        @return: A Deferred that fires once no link is open.
        """
        if not self.links:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        return d

    noisy = False

    def buildProtocol(self, addr: object) -> CacheLinkProtocol:
        """
        @return: A protocol for one link.
        """
        p = CacheLinkProtocol(self.slot, self.clock, self.reactor, self.verbose, self.limits, self.bound)
        p.factory = self
        self.links.add(p)
        return p
