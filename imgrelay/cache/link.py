# -*- test-case-name: tests.cache.test_link -*-
"""
The cache's end of the link: L{CacheLinkProtocol}, a thin adapter that
reads a proxy's hello, starts or resumes the session's stream, and feeds
that stream's L{CacheLinkState}. L{imgrelay.cache.listener.CacheLinkFactory}
builds one for each connection and keeps the L{ResumeTable} they share.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.cache.interfaces import IOpenLinks, IResumableLink, IResumeTable
from imgrelay.cache.linkstate import CacheLinkState
from imgrelay.cache.linktimers import LinkTimers
from imgrelay.cache.memory import IBoundReader, MemoryBound
from imgrelay.cache.resume import CacheStream
from imgrelay.cache.unpack import Decoder, decodeInline
from imgrelay.cache.verdicts import RestoreJobs, VerdictLink
from imgrelay.core.errors import ProtocolError, SessionError
from imgrelay.core.interfaces import ISessionClaims
from imgrelay.core.limits import DEFAULT_IDLE_TIMEOUT, Limits
from imgrelay.core.names import BadName
from imgrelay.core.store import Session
from imgrelay.transport.keepalive import watchPeer
from imgrelay.transport.peer import peerOf
from imgrelay.transport.readgate import ReadGate
from imgrelay.transport.receiver import IPayloadReceiver, SocketReceiver
from imgrelay.wire.framing import FramingError, HeaderReceived
from imgrelay.wire.link import CacheMessage, frame, helloFramer
from imgrelay.wire.pb import link_pb2

#: How much the cache reads from the link at once.
READ_SIZE = 1 << 20

#: Seconds between the progress reports a cache sends on a quiet link.
DEFAULT_HEARTBEAT = 10.0


@implementer(IPayloadReceiver, IBoundReader, IResumableLink)
class CacheLinkProtocol(Protocol, TimeoutMixin):
    """
    One link from a proxy: its hello starts a session or resumes one (see
    L{ResumeTable}); the rest is that session's stream, fed to its
    L{CacheLinkState}.
    """

    log = Logger()

    def __init__(
        self, slot: ISessionClaims, clock: Callable[[], float] = time.monotonic, reactor: Any = None,
        verbose: bool = False, limits: Limits = Limits(), bound: Optional[MemoryBound] = None,
        resumes: Optional[IResumeTable] = None, links: Optional[IOpenLinks] = None,
        idleTimeout: Optional[float] = None, heartbeat: float = 0.0, decoder: Decoder = decodeInline,
        restores: Optional[RestoreJobs] = None,
    ) -> None:
        """
        @param slot: Where sessions are claimed.
        @param clock: The time, for rates.
        @param reactor: Where a plain TCP link's socket is read, and the
            timers run (the idle timer, the heartbeat, the wait for the
            proxy to close after the confirmation); the global reactor by
            default, without the wait for the close.
        @param verbose: Log every image, not only large ones.
        @param limits: Images and bytes a session may bring.
        @param bound: The cache's memory bound, which may hold this link.
        @param resumes: Where the session's stream is kept for a resume;
            without one, a session whose link is lost fails at once.
        @param links: Told when this link closes.
        @param idleTimeout: Seconds to say hello in, or None for no limit.
        @param heartbeat: Seconds between the progress reports on a quiet
            link (L{link_pb2.Accept.heartbeat}); 0 for none.
        @param decoder: How encoded chunks are decoded.
        @param restores: With C{--restore}: the restores, for sessions and
            verdict links.
        """
        self._restores = restores
        self._verdictLink: Optional[VerdictLink] = None
        self._heartbeat = heartbeat
        self._timers = LinkTimers(self._reactorOrGlobal)
        self._lost = False
        self._resumes = resumes
        self._links = links
        self._idleTimeout = idleTimeout
        self._bound = bound
        self._gate = ReadGate()
        self._decoder = decoder
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
        @return: The state of this link's session (before a hello, none).
        """
        return self.stream.state if self.stream is not None else self._refusal

    def _reactorOrGlobal(self) -> Any:
        from twisted.internet import reactor

        return self._reactor if self._reactor is not None else reactor

    def _transport(self) -> ITransport:
        assert self.transport is not None, "not connected"
        return self.transport

    def connectionMade(self) -> None:
        """
        On a plain TCP link, receive payloads straight into the images'
        memory; on any other transport, read in large pieces. With an idle
        timeout, start waiting for the hello.
        """
        reactor = self._reactorOrGlobal()
        assert self.transport is not None
        watchPeer(self.transport)
        self._receiver = SocketReceiver.forTransport(self.transport, reactor, self)
        self._gate.attach(self.transport, self._receiver)  # type: ignore[arg-type]
        if self._receiver is None and ITCPTransport.providedBy(self.transport):
            self.transport.bufferSize = READ_SIZE  # type: ignore[attr-defined]
        if self._idleTimeout is not None:
            self.callLater = reactor.callLater  # type: ignore[method-assign]
            self.setTimeout(self._idleTimeout)

    def timeoutConnection(self) -> None:
        """No hello came in time (L{TimeoutMixin})."""
        if self.stream is None and not self._closing:
            self._fail(f"no hello within {self.timeOut:g} s (--idle-timeout)")

    # IBoundReader

    def pauseReading(self) -> None:
        """See L{IBoundReader.pauseReading}."""
        self._gate.hold("memory")

    def resumeReading(self) -> None:
        """See L{IBoundReader.resumeReading}."""
        self._gate.release("memory")

    def unpacked(self) -> None:
        """
        The stream's chunk was decoded: parse what came after it, and read
        again.
        """
        self._gate.release("decoding")
        self.dataReceived(b"")

    def dropSession(self, reason: str) -> None:
        """See L{IBoundReader.dropSession}."""
        if not self._closing:
            self._fail(reason)

    def carries(self) -> Optional[Session]:
        """See L{IBoundReader.carries}."""
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
        """See L{IPayloadReceiver.payloadRemaining}."""
        if not self._attached:
            return 0
        assert self.stream is not None
        return self.stream.framer.payloadRemaining

    def payloadReceived(self, n: int) -> None:
        """See L{IPayloadReceiver.payloadReceived}."""
        stream = self.stream
        assert stream is not None
        stream.state.chunkFilled(n)
        stream.framer.skipPayload(n)
        if stream.state.unpackPending:
            stream.framer.hold()
        stream.taken += n
        self._reportProgress()
        self._unpack()

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
        if self._verdictLink is not None:
            self._verdictLink.dataReceived(data)
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
        resumes = self._resumes
        hello = message.hello
        if self._restores is not None and hello.verdict:
            self._verdictLink = self._restores.verdictLink(hello, self._transport())
            return
        if self._restores is not None:
            self._restores.checkHello(hello)
        if hello.resume or (resumes is not None and resumes.knows(hello)):
            # A resume, or a first hello again because our accept was lost.
            if resumes is None:
                raise ProtocolError("this cache cannot resume sessions")
            stream, replies = resumes.resume(hello, self)
        else:
            state = CacheLinkState(self._slot, self._clock, self._verbose, self._limits, self._bound)
            replies = state.received(event)
            stream = CacheStream(state, hello.resume_token, hello.window, self._decoder)
            if self._restores is not None and state.session is not None:
                self._restores.start(stream.session.name or "", hello.resume_token)
            if resumes is None:
                stream.link = self
            else:
                resumes.started(stream, self)
        self.stream = stream
        for reply in replies:
            if reply.WhichOneof("kind") == "accept":
                reply.accept.heartbeat = self._heartbeat
                reply.accept.restores = self._restores is not None
        if self._heartbeat > 0:
            if not (self._lost or self._closing):
                self._timers.beat(self._heartbeat, self._beat)
        if self._bound is not None:
            # Only now does this link bring a session's bytes; the bound
            # holds it, or not, by that session (a link held before its
            # hello could never resume the oldest session).
            self._bound.addReader(self)
        for reply in replies:
            self._send(reply)
        if stream.unpacker.busy:
            self._gate.hold("decoding")
        if rest or stream.framer.buffered:
            self._feed(rest)

    def _feed(self, data: bytes) -> None:
        stream = self.stream
        assert stream is not None
        for event in stream.framer.feed(data):
            for reply in stream.state.received(event):
                self._send(reply)
            if stream.state.unpackPending and not stream.framer.held:
                # The rest waits for the chunk to be decoded.
                stream.framer.hold()
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
        self._unpack()

    def _unpack(self) -> None:
        stream = self.stream
        assert stream is not None
        if stream.state.unpackPending:
            stream.unpacker.kick()
            if stream.unpacker.busy:
                self._gate.hold("decoding")

    def _send(self, message: CacheMessage) -> None:
        self._transport().write(frame(message))
        if message.WhichOneof("kind") == "done_ok" and self._reactor is not None and not (
            self._timers.confirming or self._lost or self._closing
        ):
            grace = self._idleTimeout if self._idleTimeout is not None else DEFAULT_IDLE_TIMEOUT
            name = self.stream.session.name if self.stream is not None else None
            self._timers.afterConfirmation(grace, name, self._leftOpen)

    def _leftOpen(self) -> None:
        self._closing = True
        self._transport().abortConnection()  # type: ignore[attr-defined]

    def _stopTimers(self) -> None:
        self.setTimeout(None)
        self._timers.stop()

    def abort(self) -> None:
        """
        Reset the link now (the cache is stopping), its timers with it.
        """
        self._stopTimers()
        self._closing = True
        self._transport().abortConnection()  # type: ignore[attr-defined]

    def _beat(self) -> None:
        # Word to the proxy however quiet the link: how much of the stream
        # was taken, which it may hear any number of times.
        stream = self.stream
        if stream is not None and stream.link is self and not self._closing:
            self._transport().write(frame(CacheMessage(progress=link_pb2.Progress(received=stream.taken))))

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
        """See L{IResumableLink.replaced}."""
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
        self._lost = True
        if self._verdictLink is not None:
            self._verdictLink.connectionLost(reason)
        self._stopTimers()
        if self._receiver is not None:
            self._receiver.close()
        if self._bound is not None:
            self._bound.removeReader(self)
        stream = self.stream
        if self._resumes is not None:
            if stream is not None:
                self._resumes.linkLost(stream, self, reason)
        elif stream is not None and stream.link is self:
            stream.state.lost(f"link lost before the session completed ({reason.getErrorMessage()})")
        if self._links is not None:
            self._links.linkClosed(self)
