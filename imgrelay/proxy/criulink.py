# -*- test-case-name: tests.proxy.test_criulink -*-
"""
The proxy's end of a link in CRIU's own proxy-to-cache format
(C{--link criu}), so that an imgrelay proxy can feed CRIU's image-cache
(C{../shared/spec/criu-wire.md}, section 2; the encoding is
L{imgrelay.wire.criulink}).

For each complete image, a remote image header and exactly C{size} raw
bytes. Nothing comes back: no handshake, acknowledgement or checksum, so
every failure resets the connection, and the proxy's clean close means "no
more images". The header carries the size, so the proxy holds each image
whole until its end (store-and-forward). Between two imgrelays, imgrelay's
own link is the one to use.
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.proxy.session import ProxySession
from imgrelay.proxy.interfaces import ILinkSender
from imgrelay.wire.criu import frame
from imgrelay.wire.criulink import O_APPEND, O_WRONLY, PARENT, remoteHeader
from imgrelay.wire.link import APPEND
from imgrelay.wire.pb import criu_pb2


@attrs.define
class _Held:
    snapshotId: str
    name: str
    openMode: int
    pieces: list[bytes] = attrs.Factory(list)
    size: int = 0


@implementer(ILinkSender, IPushProducer)
class CriuLinkSender(Protocol):
    """
    The proxy's end of a CRIU-format link, for one L{ProxySession}.

    Each image is held, as the pieces its pipe delivered, until it closes;
    then its header and pieces go out together. Nothing comes back, so an
    image counts as acknowledged once written, and the session as confirmed
    once the transport flushed everything and closed cleanly.
    """

    log = Logger()

    #: Each image is held whole until it closes: pipes read into new bytes.
    ring = None

    def __init__(self, session: ProxySession) -> None:
        """@param session: The session this link carries."""
        self.session = session
        self._held: dict[int, _Held] = {}
        self._closed = False
        self._done = False

    def connectionMade(self) -> None:
        """
        There is no handshake: the session may start at once. Pause its
        pipes whenever the transport holds enough unsent data.
        """
        assert self.transport is not None
        if self.session.over:
            self._abort()
            return
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.session.accepted(self)

    def sendOpen(self, image: int, snapshotId: str, name: str, mode: int) -> None:
        """See L{ILinkSender.sendOpen}: start holding the image."""
        if self._closed:
            return
        if (snapshotId, name) == ("", PARENT):
            self._abort(f"image {PARENT!r} of the empty snapshot id is CRIU's snapshot list")
            return
        self._held[image] = _Held(snapshotId, name, O_APPEND if mode == APPEND else O_WRONLY)

    def sendSnapshot(self, snapshotId: str) -> None:
        """See L{ILinkSender.sendSnapshot}: an append of one record to C{parent}."""
        record = frame(criu_pb2.SnapshotIdRecord(snapshot_id=snapshotId))
        self._write([remoteHeader("", PARENT, O_APPEND, len(record)), record])

    def sendChunk(self, image: int, data: bytes) -> None:
        """See L{ILinkSender.sendChunk}: hold C{data} (not copied)."""
        held = self._held.get(image)
        if held is not None and data:
            held.pieces.append(data)
            held.size += len(data)

    def sendClose(self, image: int, size: int, crc: int) -> None:
        """
        See L{ILinkSender.sendClose}: send the image, header first. C{size}
        counts an appended image whole; the header counts what this append adds.
        """
        held = self._held.pop(image, None)
        if held is None or self._closed:
            return
        self._write([remoteHeader(held.snapshotId, held.name, held.openMode, held.size), *held.pieces])
        self.session.acked(image)

    def sendDone(self, images: int, size: int, digest: bytes) -> None:
        """
        See L{ILinkSender.sendDone}: close cleanly once the transport has
        written everything; L{connectionLost} then confirms the session.
        """
        if self._closed:
            return
        self._closed = self._done = True
        assert self.transport is not None
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def sendAbort(self, reason: str) -> None:
        """
        See L{ILinkSender.sendAbort}: CRIU's format has no way to say why, so
        reset the connection, which the cache cannot take for an end.
        """
        self._abort()

    def _write(self, pieces: list[bytes]) -> None:
        if not self._closed:
            assert self.transport is not None
            self.transport.writeSequence(pieces)

    def _abort(self, reason: Optional[str] = None) -> None:
        self._held.clear()
        if not self._closed:
            self._closed = True
            self.transport.abortConnection()  # type: ignore[union-attr]
        if reason is not None:
            self.session.failed(reason)

    def dataReceived(self, data: bytes) -> None:
        """A CRIU-format cache never sends anything: fail the session."""
        if not self._closed:
            self.log.error("cache sent {n} bytes on a CRIU-format link, which is one-way", n=len(data))
            self._abort("cache sent data on a CRIU-format link, which is one-way")

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        A clean close after L{sendDone} confirms the session; anything else
        fails it.
        """
        self._closed = True
        self._held.clear()
        if self.session.over:
            return
        if self._done and reason.check(ConnectionDone):
            self.session.doneOk()
        else:
            self.session.failed(f"link to the cache lost: {reason.getErrorMessage()}")

    def pauseProducing(self) -> None:
        """The transport's buffer is full: hold every pipe."""
        self.session.pause()

    def resumeProducing(self) -> None:
        """The transport drained: read the pipes again."""
        self.session.resume()

    def stopProducing(self) -> None:
        """The transport is going away; L{connectionLost} follows."""


class CriuLinkSenderFactory(ClientFactory):
    """Build the CRIU-format link for one proxy session."""

    noisy = False

    def __init__(self, session: ProxySession) -> None:
        self.session = session

    def buildProtocol(self, addr: object) -> CriuLinkSender:
        """@return: The sender for the session."""
        p = CriuLinkSender(self.session)
        p.factory = self
        return p
