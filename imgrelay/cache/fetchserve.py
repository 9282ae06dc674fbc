# -*- test-case-name: tests.cache.test_fetchserve -*-
"""
The cache's local fetch service: C{imgrelay fetch} connects to
C{DIR/imgrelay-fetch.sock} and receives every image of the session once it
is final (see L{imgrelay.wire.fetch}).

A fetch is a reader of the session like a restore: it attaches on connect
and detaches when its connection closes, so a session is not released
while a fetch still reads it. Image bytes go out straight from the image's
blocks (views, no copy) through an L{ISender}, which pauses the
L{ImageFeed} producer whenever the client reads slower than the cache
sends.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Optional, Sequence

from twisted.internet import unix
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.wire import fetch as _fetchwire
from imgrelay.core.integrity import manifestDigest
from imgrelay.core.limits import Limits
from imgrelay.local.admit import AdmittingFactory
from imgrelay.transport.senders import ISender, SocketSender, TransportSender
from imgrelay.core.store import Session, SessionState
from imgrelay.core.slot import SessionSlot

#: The most bytes of an image handed to the sender in one piece.
PIECE = 1 << 20


def sessionStream(session: Session) -> Iterator[bytes | memoryview]:
    """
    The whole answer to a fetch of a complete session, as pieces to send:
    Begin, each image's header and its bytes (views of its blocks, at most
    L{PIECE} long), and End.

    @param session: A complete session.
    """
    images = sorted(session.images.values(), key=lambda i: (i.snapshotId, i.name))
    total = sum(i.size for i in images)
    yield _fetchwire.begin(session.name or "", len(images), total)
    for image in images:
        yield _fetchwire.image(image.snapshotId, image.name, image.size, image.crc)
        for block in image.data.pieces:
            for start in range(0, len(block), PIECE):
                yield block[start : start + PIECE]
    yield _fetchwire.end(len(images), total, manifestDigest(i.manifestEntry() for i in images))


@implementer(IPushProducer)
class ImageFeed:
    """
    Hand pieces to a sender until it says it is full, then wait to be
    resumed.

    @ivar paused: Whether the sender asked for a pause.
    """

    def __init__(
        self, pieces: Iterator[bytes | memoryview], send: Callable[[Sequence[bytes | memoryview]], None],
        done: Callable[[], None],
    ) -> None:
        """
        @param pieces: What to send, in order.
        @param send: Where each piece goes (it may pause this producer).
        @param done: Called once every piece was handed over.
        """
        self._pieces = pieces
        self._send = send
        self._done = done
        self.paused = True
        self._running = False
        self._stopped = False

    def resumeProducing(self) -> None:
        """
        Send until paused or done.
        """
        self.paused = False
        if self._running:
            return
        self._running = True
        try:
            while not self.paused and not self._stopped:
                piece = next(self._pieces, None)
                if piece is None:
                    self._stopped = True
                    self._done()
                    return
                self._send([piece])
        finally:
            self._running = False

    def pauseProducing(self) -> None:
        """
        The sender is full.
        """
        self.paused = True

    def stopProducing(self) -> None:
        """
        The connection is gone: send nothing more.
        """
        self._stopped = True


def makeSender(transport: ITransport, reactor: IReactorFDSet, producer: IPushProducer,
               failed: Callable[[Exception], None]) -> ISender:
    """
    A sender writing straight from the image blocks on a plain UNIX or TCP
    socket, or through the transport (which copies) otherwise.
    """
    sender = SocketSender.forTransport(transport, reactor, producer, failed)
    if sender is None and type(transport) is unix.Server:
        sender = SocketSender(os.dup(transport.getHandle().fileno()), reactor, producer, failed)
    if sender is None:
        return TransportSender(transport, producer)
    return sender


class FetchServeProtocol(Protocol):
    """
    One C{imgrelay fetch} connection.

    @ivar session: The session it reads.
    """

    log = Logger()

    def __init__(self, slot: SessionSlot, reactor: IReactorFDSet, closed: Callable[[], None]) -> None:
        """
        @param slot: Where the session to fetch is found.
        @param reactor: Where the socket is written.
        @param closed: Called once the connection closed.
        """
        self._slot = slot
        self._reactor = reactor
        self._closed = closed
        self.session: Optional[Session] = None
        self._feed: Optional[ImageFeed] = None
        self._sender: Optional[ISender] = None
        self._gone = False
        self._finished = False

    def _transport(self) -> ITransport:
        assert self.transport is not None, "not connected"
        return self.transport

    def connectionMade(self) -> None:
        """
        Attach to the session and answer once it is final.
        """
        session = self.session = self._slot.attachRestore()
        self.log.info("fetch connected (session {session}, {state})", session=session.name, state=session.state.value)
        if session.final:
            self._serve(session)
        else:
            session.addFinalObserver(self._serve)

    def _serve(self, session: Session) -> None:
        if self._gone:
            return
        transport = self._transport()
        if session.state is SessionState.FAILED:
            self.log.warn(
                "fetch of session {session}: answered that it failed: {reason}",
                session=session.name, reason=session.failure,
            )
            transport.write(_fetchwire.error(f"session {session.name!r} failed: {session.failure}"))
            transport.loseConnection()
            return
        self._feed = ImageFeed(sessionStream(session), self._send, self._fed)
        self._sender = makeSender(transport, self._reactor, self._feed, self._sendFailed)
        self._feed.resumeProducing()

    def _send(self, pieces: Sequence[bytes | memoryview]) -> None:
        assert self._sender is not None
        self._sender.send(pieces)

    def _fed(self) -> None:
        session = self.session
        assert session is not None and self._sender is not None
        self._finished = True
        self.log.info(
            "fetch of session {session}: {images} images, {bytes} bytes sent",
            session=session.name, images=len(session.images), bytes=session.bytes,
        )
        self._sender.close(self._transport().loseConnection)

    def _sendFailed(self, error: Exception) -> None:
        self.log.error("fetch: sending failed: {error}", error=str(error))
        self._abort()

    def _abort(self) -> None:
        self._transport().abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        """
        The client has nothing to say: close a connection that speaks.
        """
        if not self._gone:
            self.log.error("fetch: the client sent {count} bytes; it must send nothing", count=len(data))
            self._gone = True
            self._abort()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        Stop sending and detach from the session.
        """
        self._closed()
        self._gone = True
        if self._feed is not None:
            self._feed.stopProducing()
        if self._sender is not None:
            self._sender.abort()
        session, self.session = self.session, None
        if session is not None:
            if session.final and not self._finished and session.state is SessionState.COMPLETE:
                self.log.warn("fetch of session {session} ended before every image was sent: {reason}",
                              session=session.name, reason=reason.getErrorMessage())
            self._slot.detachRestore(session)


class FetchServeFactory(AdmittingFactory[FetchServeProtocol]):
    """
    Serve C{imgrelay-fetch.sock} from a L{SessionSlot}.
    """

    def __init__(self, slot: SessionSlot, reactor: IReactorFDSet, limits: Limits) -> None:
        """
        @param slot: Where the session to fetch is found.
        @param reactor: Where the socket is written.
        @param limits: The daemon's limits (fetches at once).
        """
        AdmittingFactory.__init__(self, limits)
        self.slot = slot
        self.reactor = reactor

    def buildAdmitted(self, closed: Callable[[], None]) -> FetchServeProtocol:
        """
        @return: A protocol for one fetch.
        """
        return FetchServeProtocol(self.slot, self.reactor, closed)
