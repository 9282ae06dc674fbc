# -*- test-case-name: tests.test_proxylink -*-
"""
The proxy's end of the link: says hello, carries a L{ProxySession}'s images
to the cache, and reports the cache's answers back to the session.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay._framing import FramingError, HeaderReceived
from imgrelay._linkwire import (
    MAX_CHUNK,
    VERSION,
    ProxyMessage,
    cacheMessageFramer,
    chunkHeader,
    frame,
)
from imgrelay._pb import link_pb2
from imgrelay._proxysession import ILinkSender, ProxySession

#: How much the link transport may hold before it pauses the pipes.
SEND_BUFFER = 4 << 20


@implementer(ILinkSender, IPushProducer)
class ProxyLinkProtocol(Protocol):
    """
    One link to a cache, for one session.
    """

    log = Logger()

    def __init__(self, session: ProxySession) -> None:
        self.session = session
        self._framer = cacheMessageFramer()
        self._closed = False

    def connectionMade(self) -> None:
        """
        Say hello, and let the transport pause the session's pipes when its
        buffer fills.
        """
        if ITCPTransport.providedBy(self.transport):
            self.transport.bufferSize = SEND_BUFFER  # type: ignore[attr-defined]
        self.transport.registerProducer(self, True)
        self._send(ProxyMessage(hello=link_pb2.Hello(version=VERSION, session=self.session.name)))

    def _send(self, message: ProxyMessage) -> None:
        if not self._closed:
            self.transport.write(frame(message))

    # ILinkSender

    def sendOpen(self, image: int, snapshotId: str, name: str) -> None:
        """
        See L{ILinkSender.sendOpen}.
        """
        self._send(ProxyMessage(open=link_pb2.ImageOpen(image=image, name=name, snapshot_id=snapshotId)))

    def sendChunk(self, image: int, data: bytes) -> None:
        """
        See L{ILinkSender.sendChunk}.
        """
        if self._closed:
            return
        for start in range(0, len(data), MAX_CHUNK):
            piece = data[start : start + MAX_CHUNK]
            self.transport.writeSequence([chunkHeader(image, len(piece)), piece])

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
            self.transport.loseConnection()

    # What the cache says.

    def dataReceived(self, data: bytes) -> None:
        """
        Dispatch the cache's answers to the session.
        """
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._handle(event.message)
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

    def __init__(self, session: ProxySession) -> None:
        self.session = session

    noisy = False

    def buildProtocol(self, addr: object) -> ProxyLinkProtocol:
        """
        @return: The protocol for the session's link.
        """
        p = ProxyLinkProtocol(self.session)
        p.factory = self
        return p
