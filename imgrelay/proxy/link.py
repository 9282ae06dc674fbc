# -*- test-case-name: tests.proxy.test_link -*-
"""
The proxy's end of one link connection: says hello, writes the session
stream a L{LinkStream} hands it, and reports the cache's answers.
"""

from __future__ import annotations

import socket
from typing import Any, Optional, Sequence

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.wire.framing import FramingError, HeaderReceived
from imgrelay.transport.keepalive import watchPeer
from imgrelay.transport.tcpinfo import Delivery, delivery, tcpSocket
from imgrelay.proxy.packer import Compression
from imgrelay.proxy.stream import DEFAULT_WINDOW, IConnection, LinkStream
from imgrelay.wire.link import cacheMessageFramer, frame
from imgrelay.proxy.outbound import Buffer
from imgrelay.wire.pb import link_pb2
from imgrelay.proxy.session import ProxySession
from imgrelay.transport.senders import ISender, SocketSender, TransportSender

#: A link whose cache promised word every heartbeat is dead after this many
#: heartbeats of silence.
SILENT_BEATS = 3


@implementer(IConnection, IPushProducer)
class ProxyLinkProtocol(Protocol, TimeoutMixin):
    """
    One connection to a cache, carrying a session's L{LinkStream}: a new
    session on the first connection, the same session resumed on the next.
    """

    log = Logger()

    def __init__(self, stream: LinkStream, reactor: Any = None, idleTimeout: Optional[float] = None) -> None:
        """
        @param stream: The session's stream this connection carries.
        @param reactor: Where a plain TCP link's socket is written, and
            timers run; the global reactor by default.
        @param idleTimeout: Seconds the cache may take to answer the hello
            before the connection is dropped; None for no limit.
        """
        self.stream = stream
        self._idleTimeout = idleTimeout
        self.session = stream.session
        self._reactor = reactor
        self._framer = cacheMessageFramer()
        self._closed = False
        self._lost = False
        self._accepted = False
        self._heartbeat = 0.0
        self._socket: Optional[socket.socket] = None
        self._sender: ISender

    def connectionMade(self) -> None:
        """
        Choose how to send (straight from the pipes' buffers on a plain TCP
        socket) and say hello.
        """
        transport = self.transport
        assert transport is not None
        self._socket = tcpSocket(transport)
        watchPeer(transport)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        sender = SocketSender.forTransport(transport, reactor, self, self._sendFailed)
        self._sender = sender if sender is not None else TransportSender(transport, self)
        self._sender.send([frame(self.stream.hello())])
        self._reactor = reactor
        if self._idleTimeout is not None:
            self._timeouts()
            self.setTimeout(self._idleTimeout)

    def _timeouts(self) -> None:
        # TimeoutMixin's timer runs on our reactor, not the global one.
        self.callLater = self._reactor.callLater  # type: ignore[method-assign]

    def timeoutConnection(self) -> None:
        """
        The cache did not answer the hello in time, or, having promised
        word at least every heartbeat, said nothing for three of them
        (L{TimeoutMixin}): the link is dead, though no reset said so (a
        peer gone behind a relay or a firewall that drops everything).
        Drop it; the session is resumed on a new one.
        """
        if self._closed:
            return
        if not self._accepted:
            self.log.warn(
                "session {session}: the cache did not answer the hello within {timeout:g} s; dropping the connection",
                session=self.session.name, timeout=self.timeOut,
            )
        else:
            self.log.warn(
                "session {session}: no word from the cache for {timeout:g} s (it promised one every {heartbeat:g} s); "
                "the link is dead, dropping it",
                session=self.session.name, timeout=SILENT_BEATS * self._heartbeat, heartbeat=self._heartbeat,
            )
        self._abort()

    def _sendFailed(self, error: Exception) -> None:
        self.log.error("sending to the cache failed: {error}", error=error)
        self._abort()

    # IConnection

    def write(self, pieces: Sequence[Buffer]) -> None:
        """
        See L{IConnection.write}.
        """
        if not self._closed:
            self._sender.send(pieces)

    def close(self) -> None:
        """
        See L{IConnection.close}.
        """
        if not self._closed:
            self._closed = True
            transport = self.transport
            assert transport is not None
            self._sender.close(transport.loseConnection)

    def delivery(self) -> Optional[Delivery]:
        """
        See L{IConnection.delivery}.
        """
        return None if self._socket is None else delivery(self._socket)

    def abort(self) -> None:
        """
        Drop the connection now, whatever it still holds.
        """
        if self.transport is not None and not self._lost:
            self._abort()

    def _abort(self) -> None:
        self._closed = True
        self._sender.abort()
        self.transport.abortConnection()  # type: ignore[union-attr]

    # What the cache says.

    def dataReceived(self, data: bytes) -> None:
        """
        Dispatch the cache's answers.
        """
        if self._closed:
            return
        self.resetTimeout()
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._handle(event.message)
                if self._closed:
                    return
        except FramingError as e:
            self.session.failed(f"cache sent malformed data: {e}")
            self.close()

    def _handle(self, message: link_pb2.CacheMessage) -> None:
        kind = message.WhichOneof("kind")
        session = self.session
        if kind in ("accept", "refuse"):
            self.setTimeout(None)
        if kind == "accept":
            if self._accepted:
                session.failed("the cache accepted the session twice")
            else:
                self._accepted = True
                self._heartbeat = message.accept.heartbeat
                if self._heartbeat > 0:
                    self._timeouts()
                    self.setTimeout(SILENT_BEATS * self._heartbeat)
                self.stream.attach(self, message.accept)
        elif not self._accepted and kind not in ("refuse", "failed"):
            session.failed(f"cache sent {kind} before accepting the session")
        elif kind == "progress":
            self.stream.progress(message.progress.received)
        elif kind == "ack":
            self.stream.imageAcked(message.ack.image)
        elif kind == "done_ok":
            session.doneOk()
            self.close()
        elif kind == "refuse":
            session.failed(f"cache refused the session: {message.refuse.reason}")
        elif kind == "image_refused":
            session.failed(f"cache refused an image: {message.image_refused.reason}")
        elif kind == "failed":
            session.failed(f"cache failed the session: {message.failed.reason}")
        if session.over:
            self.close()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        The stream waits for another connection (or the session is over).
        """
        self._closed = self._lost = True
        self.setTimeout(None)
        owner = self.factory
        if isinstance(owner, ProxyLinkFactory) and owner.current is self:
            owner.current = None
        self._sender.abort()
        if not self._accepted and _isTLSError(reason) and not self.session.over:
            # A certificate the other end refuses will not get better by
            # trying again.
            self.session.failed(f"TLS with the cache failed: {reason.getErrorMessage()}")
        self.stream.detach(self, reason.getErrorMessage())

    # IPushProducer, for the link's transport.

    def pauseProducing(self) -> None:
        """
        The link's send buffer is full: hold every pipe.
        """
        if self._accepted and not self._closed:
            self.session.pause()

    def resumeProducing(self) -> None:
        """
        The link drained: read the pipes again.
        """
        self.session.resume()

    def stopProducing(self) -> None:
        """
        The transport is going away; L{connectionLost} follows.
        """


def _isTLSError(reason: Failure) -> bool:
    # Without importing OpenSSL, which only a TLS link loads.
    return type(reason.value).__module__.split(".")[0] in ("OpenSSL", "service_identity")


class ProxyLinkFactory(ClientFactory):
    """
    Build the link protocol for one session.
    """

    noisy = False

    def __init__(
        self, session: ProxySession, reactor: Any = None, window: int = DEFAULT_WINDOW,
        idleTimeout: Optional[float] = None, compression: Optional[Compression] = None, verdict: bool = False,
    ) -> None:
        """
        @param session: The session every connection carries.
        @param reactor: Where plain TCP sockets are written, and timers run.
        @param window: The most bytes held unacknowledged.
        @param idleTimeout: Seconds the cache may take to answer a hello
            before the connection is dropped (and dialled again); None for
            no limit.
        @param compression: How to compress, if at all.
        @param verdict: See L{LinkStream}.
        """
        self.idleTimeout = idleTimeout
        self.session = session
        self.reactor = reactor
        self.stream = LinkStream(session, window, compression, verdict)
        self.current: Optional[ProxyLinkProtocol] = None

    def buildProtocol(self, addr: object) -> ProxyLinkProtocol:
        """
        @return: A protocol for one connection of the session's link.
        """
        p = ProxyLinkProtocol(self.stream, self.reactor, self.idleTimeout)
        p.factory = self
        self.current = p
        return p
