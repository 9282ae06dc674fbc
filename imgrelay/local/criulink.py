# -*- test-case-name: tests.local.test_criulink -*-
"""
CRIU's own proxy-to-cache format on the link (C{--link criu}), so that an
imgrelay proxy can feed CRIU's image-cache and CRIU's image-proxy an
imgrelay cache (C{../shared/spec/criu-wire.md}, section 2).

For each complete image, a remote image header (little-endian u32 length,
then C{RemoteImageHeader}) and exactly C{size} raw bytes, C{size} possibly
0. A write (C{open_mode} 1) replaces an earlier image of the same (snapshot
id, name); an append (C{open_mode & 1024}) adds to it. The snapshot list is
appends of framed C{SnapshotIdRecord}s to C{parent} of the empty snapshot id.
The proxy's clean close means "no more images".

Nothing else exists: no handshake, acknowledgement or checksum. A clean
close at an image boundary is all the cache can check, so every failure
resets the connection instead. The header carries the size, so the proxy
holds each image whole until its end (store-and-forward). Between two
imgrelays, imgrelay's own link is the one to use.
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.wire.criu import PREFIX, frame
from imgrelay.core.errors import SessionError
from imgrelay.wire.framing import Framer, FramingError, HeaderReceived, MalformedHeader, PayloadChunk, PayloadDone
from imgrelay.core.imagedata import ImageData
from imgrelay.core.integrity import RunningChecksum
from imgrelay.wire.link import APPEND
from imgrelay.observe.logs import logsImage
from imgrelay.core.names import BadName, checkId, checkImageName
from imgrelay.wire.pb import criu_pb2
from imgrelay.proxy.session import ILinkSender, ProxySession
from imgrelay.core.store import Image, Session, SessionSlot

#: CRIU's open modes (Linux values) in a remote image header.
O_WRONLY = 1
O_APPEND = 1024

#: The image that carries the snapshot list, in the empty snapshot id.
PARENT = "parent"

#: The most a snapshot list message may hold (each id is at most 4 KiB).
MAX_SNAPSHOT_LIST = 1 << 20


def _decodeHeader(data: bytes) -> tuple[criu_pb2.RemoteImageHeader, int]:
    header = criu_pb2.RemoteImageHeader.FromString(data)
    # proto2 strings are not checked by the parser: bad UTF-8 is bytes.
    if not isinstance(header.name, str) or not isinstance(header.snapshot_id, str):
        raise MalformedHeader("remote image header holds a name that is not UTF-8")
    return header, header.size


def _decodeRecord(data: bytes) -> tuple[criu_pb2.SnapshotIdRecord, int]:
    record = criu_pb2.SnapshotIdRecord.FromString(data)
    if not isinstance(record.snapshot_id, str):
        raise MalformedHeader("snapshot id record is not UTF-8")
    return record, 0


def remoteHeader(snapshotId: str, name: str, openMode: int, size: int) -> bytes:
    """@return: A framed remote image header."""
    return frame(criu_pb2.RemoteImageHeader(name=name, snapshot_id=snapshotId, open_mode=openMode, size=size))


def parseSnapshotList(content: bytes) -> list[str]:
    """
    @param content: A C{parent} message's content: framed C{SnapshotIdRecord}s.
    @return: Their snapshot ids, in order.
    @raise FramingError: If a record is malformed or cut short.
    @raise BadName: If an id is not acceptable.
    """
    framer: Framer[criu_pb2.SnapshotIdRecord] = Framer(_decodeRecord, PREFIX)
    ids = [checkId("snapshot id", e.message.snapshot_id) for e in framer.feed(content) if isinstance(e, HeaderReceived)]
    if not framer.atBoundary:
        raise FramingError("snapshot list ends in the middle of a record")
    return ids


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

    def __init__(self, slot: SessionSlot, verbose: bool = False) -> None:
        """
        @param slot: Where the session is claimed.
        @param verbose: Log every image, not only large ones.
        """
        self._slot = slot
        self.verbose = verbose
        self.session: Optional[Session] = None
        self._framer: Framer[criu_pb2.RemoteImageHeader] = Framer(_decodeHeader, PREFIX)
        self._current: Optional[_Incoming] = None
        self._closing = False

    def connectionMade(self) -> None:
        """Claim a session named after the peer."""
        assert self.transport is not None
        peer = self.transport.getPeer()
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        name = "criu-link:" + (f"{host}:{port}" if host is not None else str(peer))
        try:
            self.session = self._slot.claim(name)
        except SessionError as e:
            self.log.error("CRIU-format link from {peer} refused: {reason}", peer=str(peer), reason=str(e))
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
        if isinstance(self.factory, CriuLinkReceiverFactory):
            self.factory.links.discard(self)
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


class CriuLinkReceiverFactory(Factory):
    """Accept CRIU-format links into a L{SessionSlot}."""

    noisy = False

    def __init__(self, slot: SessionSlot, verbose: bool = False) -> None:
        self.slot = slot
        self.verbose = verbose
        self.links: set[CriuLinkReceiver] = set()

    def abortAll(self) -> None:
        """Reset every link (the cache is stopping): sessions not complete fail."""
        for link in list(self.links):
            link.transport.abortConnection()  # type: ignore[union-attr]

    def buildProtocol(self, addr: object) -> CriuLinkReceiver:
        """@return: A receiver for one link."""
        p = CriuLinkReceiver(self.slot, self.verbose)
        p.factory = self
        self.links.add(p)
        return p
