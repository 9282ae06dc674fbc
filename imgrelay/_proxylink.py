# -*- test-case-name: tests.test_proxylink -*-
"""
The proxy's end of the link: says hello, carries a L{ProxySession}'s images
to the cache, and reports the cache's answers back to the session.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay._framing import FramingError, HeaderReceived
from imgrelay._linkwire import (
    CREATE,
    MAX_CHUNK,
    VERSION,
    ProxyMessage,
    cacheMessageFramer,
    chunkHeader,
    frame,
)
from imgrelay._keepalive import watchPeer
from imgrelay._pb import link_pb2
from imgrelay._pipes import BufferRing
from imgrelay._proxysession import ILinkSender, ProxySession
from imgrelay._senders import ISender, SocketSender, TransportSender


@implementer(ILinkSender, IPushProducer)
class ProxyLinkProtocol(Protocol):
    """
    One link to a cache, for one session.
    """

    log = Logger()

    def __init__(self, session: ProxySession, reactor: Any = None) -> None:
        """
        @param session: The session this link carries.
        @param reactor: Where a plain TCP link's socket is written; the
            global reactor by default.
        """
        self.session = session
        self._reactor = reactor
        self._framer = cacheMessageFramer()
        self._closed = False
        self._sender: ISender
        self.ring: Optional[BufferRing] = None

    def connectionMade(self) -> None:
        """
        Choose how to send (straight from the pipes' buffers on a plain TCP
        socket), say hello, and pause the session's pipes whenever the link
        holds enough unsent data.
        """
        transport = self.transport
        assert transport is not None
        watchPeer(transport)
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        sender = SocketSender.forTransport(transport, reactor, self, self._sendFailed)
        self._sender = sender if sender is not None else TransportSender(transport, self)
        if sender is not None:
            # The socket is written straight from the read buffers: they
            # can be read into again once sent.
            self.ring = BufferRing(lambda: sender.written, lambda: sender.queued)
        self._send(ProxyMessage(hello=link_pb2.Hello(version=VERSION, session=self.session.name)))

    def _sendFailed(self, error: Exception) -> None:
        self.session.failed(f"sending to the cache failed: {error}")
        self._abort()

    def _send(self, message: ProxyMessage) -> None:
        if not self._closed:
            self._sender.send([frame(message)])

    # ILinkSender

    def sendOpen(self, image: int, snapshotId: str, name: str, mode: int = CREATE) -> None:
        """
        See L{ILinkSender.sendOpen}.
        """
        self._send(
            ProxyMessage(open=link_pb2.ImageOpen(image=image, name=name, snapshot_id=snapshotId, mode=mode))  # type: ignore[arg-type]
        )

    def sendSnapshot(self, snapshotId: str) -> None:
        """
        See L{ILinkSender.sendSnapshot}.
        """
        self._send(ProxyMessage(snapshot=link_pb2.SnapshotPush(snapshot_id=snapshotId)))

    def sendChunk(self, image: int, data: bytes) -> None:
        """
        See L{ILinkSender.sendChunk}.
        """
        if self._closed or not data:
            return
        if len(data) <= MAX_CHUNK:
            self._sender.send([chunkHeader(image, len(data)), data])
            return
        view = memoryview(data)
        for start in range(0, len(view), MAX_CHUNK):
            piece = view[start : start + MAX_CHUNK]
            self._sender.send([chunkHeader(image, len(piece)), piece])

    def sendClose(self, image: int, size: int, crc: int) -> None:
        """
        See L{ILinkSender.sendClose}.
        """
        self._send(ProxyMessage(close=link_pb2.ImageClose(image=image, size=size, crc32c=crc)))

    def sendDone(self, images: int, size: int, digest: bytes) -> None:
        """
        See L{ILinkSender.sendDone}.
        """
        self._send(ProxyMessage(done=link_pb2.Done(images=images, bytes=size, manifest_sha256=digest)))

    def sendAbort(self, reason: str) -> None:
        """
        See L{ILinkSender.sendAbort}.
        """
        self._send(ProxyMessage(abort=link_pb2.Abort(reason=reason)))
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            transport = self.transport
            assert transport is not None
            self._sender.close(transport.loseConnection)

    def _abort(self) -> None:
        self._closed = True
        self._sender.abort()
        self.transport.abortConnection()  # type: ignore[union-attr]

    # What the cache says.

    def dataReceived(self, data: bytes) -> None:
        """
        Dispatch the cache's answers to the session.
        """
        if self._closed:
            return
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._handle(event.message)
                if self._closed:
                    return
        except FramingError as e:
            self.session.failed(f"cache sent malformed data: {e}")
            self._close()

    def _handle(self, message: link_pb2.CacheMessage) -> None:
        kind = message.WhichOneof("kind")
        session = self.session
        if kind == "accept":
            session.accepted(self)
        elif kind == "ack":
            session.acked(message.ack.image)
        elif kind == "done_ok":
            session.doneOk()
            self._close()
        elif kind == "refuse":
            session.failed(f"cache refused the session: {message.refuse.reason}")
        elif kind == "image_refused":
            session.failed(f"cache refused an image: {message.image_refused.reason}")
        elif kind == "failed":
            session.failed(f"cache failed the session: {message.failed.reason}")
        if session.over:
            self._close()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        A session not yet confirmed fails.
        """
        self._closed = True
        self._sender.abort()
        if not self.session.over:
            self.session.failed(f"link to the cache lost: {reason.getErrorMessage()}")

    # IPushProducer, for the link's transport.

    def pauseProducing(self) -> None:
        """
        The link's send buffer is full: hold every pipe.
        """
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


class ProxyLinkFactory(ClientFactory):
    """
    Build the link protocol for one session.
    """

    noisy = False

    def __init__(self, session: ProxySession, reactor: Any = None) -> None:
        self.session = session
        self.reactor = reactor

    def buildProtocol(self, addr: object) -> ProxyLinkProtocol:
        """
        @return: The protocol for the session's link.
        """
        p = ProxyLinkProtocol(self.session, self.reactor)
        p.factory = self
        return p
