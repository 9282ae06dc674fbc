# -*- test-case-name: tests.cache.test_criulink -*-
"""
The cache's end of a link in CRIU's own proxy-to-cache format
(C{--link criu}), so that CRIU's image-proxy can feed an imgrelay cache
(C{../shared/spec/criu-wire.md}, section 2; the encoding is
L{imgrelay.wire.criulink}).

A write (C{open_mode} 1) replaces an earlier image of the same (snapshot
id, name); an append (C{open_mode & 1024}) adds to it. The snapshot list is
appends of framed C{SnapshotIdRecord}s to C{parent} of the empty snapshot
id. No handshake, acknowledgement or checksum exists: a clean close at an
image boundary is all the cache can check, so the proxy resets the
connection on every failure.
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.cache.interfaces import ILinkListener
from imgrelay.core.errors import SessionError
from imgrelay.core.imagedata import ImageData
from imgrelay.core.integrity import RunningChecksum
from imgrelay.core.names import BadName, checkId, checkImageName
from imgrelay.core.store import Image, Session
from imgrelay.core.slot import SessionSlot
from imgrelay.observe.logs import logsImage
from imgrelay.transport.peer import peerOf
from imgrelay.wire.criu import PREFIX
from imgrelay.wire.criulink import MAX_SNAPSHOT_LIST, O_APPEND, PARENT, decodeRemoteHeader, parseSnapshotList
from imgrelay.wire.framing import Framer, FramingError, HeaderReceived, PayloadChunk, PayloadDone
from imgrelay.wire.pb import criu_pb2


@attrs.define
class _Incoming:
    header: criu_pb2.RemoteImageHeader
    data: ImageData
    checksum: RunningChecksum


class CriuLinkReceiver(Protocol):
    """
    The cache's end of a CRIU-format link: fills one session of a
    L{SessionSlot}.

    An image is stored with L{Session.addVerified} once its announced size
    has arrived. "Verified" only means I{complete} here: the format has no
    checksum to verify (the CRC-32C is computed here, for the store). A
    clean EOF between two images completes the session; any other end
    fails it.
    """

    log = Logger()

    def __init__(
        self, slot: SessionSlot, verbose: bool = False, closed: Callable[[CriuLinkReceiver], None] = lambda link: None
    ) -> None:
        """
        @param slot: Where the session is claimed.
        @param verbose: Log every image, not only large ones.
        @param closed: Called with this receiver once its connection is lost.
        """
        self._slot = slot
        self._closed = closed
        self.verbose = verbose
        self.session: Optional[Session] = None
        self._framer: Framer[criu_pb2.RemoteImageHeader] = Framer(decodeRemoteHeader, PREFIX)
        self._current: Optional[_Incoming] = None
        self._closing = False

    def connectionMade(self) -> None:
        """Claim a session named after the peer."""
        assert self.transport is not None
        peer = peerOf(self.transport)
        name = "criu-link:" + peer
        try:
            self.session = self._slot.claim(name)
        except SessionError as e:
            self.log.error("CRIU-format link from {peer} refused: {reason}", peer=peer, reason=str(e))
            self._closing = True
            self.transport.loseConnection()
            return
        # CRIU's format says nothing of an image before it is whole, nor
        # whether a later version follows: reads wait for the link's end.
        self.session.readsWaitForEnd = True
        self.log.info("session {session}: CRIU-format link connected", session=name)

    def dataReceived(self, data: bytes) -> None:
        """Parse headers and payloads; fail the session on any error."""
        if self._closing:
            return
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._header(event.message)
                elif isinstance(event, PayloadChunk):
                    current = self._current
                    assert current is not None
                    current.checksum.update(event.data)
                    current.data.append(event.data)
                elif isinstance(event, PayloadDone):
                    self._imageDone()
        except (FramingError, BadName, SessionError) as e:
            self._fail(str(e))

    def _header(self, header: criu_pb2.RemoteImageHeader) -> None:
        session = self.session
        assert session is not None
        name, snapshotId, size = header.name, header.snapshot_id, header.size
        if (snapshotId, name) == ("", PARENT):
            if size > MAX_SNAPSHOT_LIST:
                raise SessionError(f"snapshot list of {size} bytes is over {MAX_SNAPSHOT_LIST}")
            self._current = _Incoming(header, ImageData(), RunningChecksum())
        else:
            checkImageName(name)
            checkId("snapshot id", snapshotId)
            if not header.open_mode & (O_APPEND | 3):
                raise SessionError(f"image {name!r}: open mode {header.open_mode} is not a write")
            data, checksum = ImageData(), RunningChecksum()
            earlier = session.images.get((snapshotId, name))
            if header.open_mode & O_APPEND and earlier is not None:
                data, checksum = ImageData.continuing(earlier.data), RunningChecksum(earlier.size, earlier.crc)
            self._current = _Incoming(header, data, checksum)
            session.arriving(snapshotId, name)
        if size == 0:
            self._imageDone()

    def _imageDone(self) -> None:
        session, incoming = self.session, self._current
        assert session is not None and incoming is not None
        self._current = None
        header = incoming.header
        incoming.data.close()
        if (header.snapshot_id, header.name) == ("", PARENT):
            for snapshotId in parseSnapshotList(incoming.data.tobytes()):
                session.pushSnapshot(snapshotId)
            return
        session.addVerified(Image(header.snapshot_id, header.name, incoming.data, incoming.checksum.crc))
        if logsImage(header.size, self.verbose):
            self.log.info(
                "session {session}: image {name} received, {size} bytes (unverified)",
                session=session.name, name=header.name, snapshot=header.snapshot_id, size=header.size,
            )

    def _fail(self, reason: str) -> None:
        self._closing = True
        session = self.session
        if session is not None and not session.final:
            self.log.error("session {session} failed: {reason}", session=session.name, reason=reason)
            session.fail(reason)
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        A clean EOF between images completes the session; an EOF inside a
        header or an image, or a broken connection, fails it.
        """
        self._closed(self)
        session = self.session
        if session is None or session.final:
            return
        incoming = self._current
        if reason.check(ConnectionDone) and incoming is None and self._framer.atBoundary:
            session.complete()
            self.log.info(
                "session {session}: CRIU-format link closed, {images} images, {bytes} bytes "
                "(unverified: CRIU's format has no checksums)",
                session=session.name, images=len(session.images), bytes=session.bytes,
            )
            return
        if incoming is not None:
            h, missing = incoming.header, self._framer.payloadRemaining
            why = f"image {h.name!r} of snapshot {h.snapshot_id!r} cut short: {missing} of its {h.size} bytes missing"
        elif not self._framer.atBoundary:
            why = "link ended in the middle of a remote image header"
        else:
            why = "link broken between images"
        why = f"{why} ({reason.getErrorMessage()})"
        self.log.error("session {session} failed: {reason}", session=session.name, reason=why)
        session.fail(why)


@implementer(ILinkListener)
class CriuLinkReceiverFactory(Factory):
    """Accept CRIU-format links into a L{SessionSlot}."""

    noisy = False

    def __init__(self, slot: SessionSlot, verbose: bool = False) -> None:
        self.slot = slot
        self.verbose = verbose
        self.links: set[CriuLinkReceiver] = set()
        self._idleWaiters: list[Deferred[None]] = []

    def abortAll(self) -> None:
        """Reset every link (the cache is stopping): sessions not complete fail."""
        for link in list(self.links):
            link.transport.abortConnection()  # type: ignore[union-attr]

    def whenIdle(self) -> Deferred[None]:
        """See L{ILinkListener.whenIdle}."""
        if not self.links:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        return d

    def _linkClosed(self, link: CriuLinkReceiver) -> None:
        self.links.discard(link)
        if not self.links:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def buildProtocol(self, addr: object) -> CriuLinkReceiver:
        """@return: A receiver for one link."""
        p = CriuLinkReceiver(self.slot, self.verbose, self._linkClosed)
        p.factory = self
        self.links.add(p)
        return p
