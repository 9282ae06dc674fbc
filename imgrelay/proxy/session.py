# -*- test-case-name: tests.proxy.test_session -*-
"""
One migration session as the proxy runs it: the images CRIU opened, their
checksums, what the cache acknowledged, and when the session is over.

The session does no I/O of its own: it talks to a L{ILinkSender} (the link
protocol) and is told what the cache answered.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.core.observers import Observers
from imgrelay.proxy.interfaces import ILinkSender, SessionOutcome
from imgrelay.core.errors import SessionError
from imgrelay.core.integrity import ManifestEntry, RunningChecksum, manifestDigest
from imgrelay.core.interfaces import IImageSink, IOutgoingImage
from imgrelay.core.imagedata import ImageData
from imgrelay.wire.link import APPEND, CREATE
from imgrelay.observe.logs import logsImage, rate
from imgrelay.core.names import MAX_NAME, checkId, checkImageName
from imgrelay.transport.pipes import BufferRing
from imgrelay.core.store import Image, Session


@implementer(IOutgoingImage)
class OutgoingImage:
    """
    An image on its way to the cache.
    """

    def __init__(
        self, session: ProxySession, imageId: int, snapshotId: str, name: str,
        checksum: RunningChecksum, data: Optional[ImageData],
    ) -> None:
        self.session = session
        self.id = imageId
        self.snapshotId = snapshotId
        self.name = name
        self.checksum = checksum
        self.data = data
        self.producer: Optional[IPushProducer] = None
        self.opened = session.clock()
        self.closed: Optional[float] = None

    @property
    def ring(self) -> Optional[BufferRing]:
        """
        Buffers to read this image's pipe into, when the link sends
        straight from them; None to read into new bytes.
        """
        link = self.session._link
        return link.ring if link is not None else None

    def attachProducer(self, producer: object) -> None:
        """
        See L{IOutgoingImage.attachProducer}.
        """
        self.producer = IPushProducer(producer)
        if self.session.paused:
            self.producer.pauseProducing()
        else:
            self.producer.resumeProducing()

    def write(self, data: bytes) -> None:
        """
        See L{IOutgoingImage.write}.
        """
        self.session.imageData(self, data)

    def close(self) -> None:
        """
        See L{IOutgoingImage.close}.
        """
        self.session.imageClosed(self)


@implementer(IImageSink)
class ProxySession:
    """
    See the module docstring.

    @ivar ready: Fires once the cache accepted the session.
    @ivar result: Fires with a L{SessionOutcome} once the cache confirmed
        the final handshake, or fails with L{SessionError}: for the one
        local side that drives the session, which must handle the failure.
        Others watch with L{addOverObserver}.
    @ivar paused: Whether the image producers are held: no link accepted
        (yet, or again), its send buffer full, or its unacknowledged window
        full.
    """

    log = Logger()

    def __init__(
        self, name: str, clock: Callable[[], float] = time.monotonic, keepImages: bool = False,
        verbose: bool = False, maxNameLength: int = MAX_NAME,
    ) -> None:
        """
        @param name: The session's name, sent in hello.
        @param clock: The time, for rates.
        @param keepImages: Keep a copy of every image for L{localImage}
            (CRIU's C{--remote} dump reads some back).
        @param verbose: Log every image, not only large ones.
        @param maxNameLength: The longest image name taken from CRIU.
        """
        self.maxNameLength = maxNameLength
        self.name = checkId("session name", name)
        self.verbose = verbose
        self.snapshots: list[str] = []
        self.local: Optional[Session] = Session(clock) if keepImages else None
        self.clock = clock
        self.ready: Deferred[None] = Deferred()
        self.result: Deferred[SessionOutcome] = Deferred()
        self._holds: set[str] = {"link"}
        self._link: Optional[ILinkSender] = None
        self._open: dict[int, OutgoingImage] = {}
        self._unacked: dict[int, OutgoingImage] = {}
        self._manifest: dict[tuple[str, str], ManifestEntry] = {}
        self._nextId = 1
        self._finishing = False
        self._doneSent = False
        self._over = False
        self._started = clock()
        self._overObservers: Observers[Union[SessionOutcome, Failure]] = Observers()
        self._ackObservers: Observers[OutgoingImage] = Observers()
        #: When the link's transport last pushed back (its buffer full), or
        #: None: how L{imgrelay.proxy.packer} tells a link that is the
        #: bottleneck.
        self.pushedBack: Optional[float] = None
        #: The secret its link presents to resume it (and its verdict link
        #: to claim the restore), once a link stream carries it.
        self.linkToken: Optional[bytes] = None
        #: Bytes of image content read from CRIU so far.
        self.bytesRead = 0
        #: What the image content sent so far came to on the link
        #: (compressed or not; resent bytes not counted again).
        self.bytesOnLink = 0

    # Calls from the local (CRIU) side.

    def openImage(self, snapshotId: str, name: str, mode: int = CREATE) -> OutgoingImage:
        """
        See L{IImageSink.openImage}.
        """
        if self._over or self._finishing or self._link is None:
            raise SessionError(f"session {self.name!r} takes no new image now")
        checkImageName(name, self.maxNameLength)
        checkId("snapshot id", snapshotId)
        key = (snapshotId, name)
        if any((i.snapshotId, i.name) == key for i in self._open.values()):
            raise SessionError(f"image {name!r} of snapshot {snapshotId!r} is already being written")
        earlier = self._manifest.get(key)
        if mode == CREATE and earlier is not None:
            raise SessionError(f"image {name!r} written twice in snapshot {snapshotId!r}")
        checksum = RunningChecksum()
        data: Optional[ImageData] = None
        if mode == APPEND and earlier is not None:
            checksum = RunningChecksum(earlier.size, earlier.crc)
        if self.local is not None:
            kept = self.local.images.get(key)
            data = ImageData.continuing(kept.data) if mode == APPEND and kept is not None else ImageData()
            self.local.arriving(snapshotId, name)
        image = OutgoingImage(self, self._nextId, snapshotId, name, checksum, data)
        self._nextId += 1
        self._open[image.id] = image
        self._link.sendOpen(image.id, snapshotId, name, mode)
        return image

    def pushSnapshot(self, snapshotId: str) -> None:
        """
        See L{IImageSink.pushSnapshot}.
        """
        if self._over or self._link is None:
            raise SessionError(f"session {self.name!r} takes no snapshot now")
        checkId("snapshot id", snapshotId)
        self.snapshots.append(snapshotId)
        self._link.sendSnapshot(snapshotId)

    def localImage(self, snapshotId: str, name: str) -> Deferred[Optional[Image]]:
        """
        An image as this proxy holds it, for a dump that reads back: at once
        if complete, once complete if still being written, None if unknown.
        """
        local = self.local
        if local is None or not local.expects(snapshotId, name):
            return succeed(None)
        return local.waitImage(snapshotId, name)

    def imageData(self, image: OutgoingImage, data: bytes) -> None:
        """
        Send an image's next bytes, checksumming them on the way.
        """
        if self._over or self._link is None:
            return
        image.checksum.update(data)
        self.bytesRead += len(data)
        if image.data is not None:
            image.data.append(data)
        self._link.sendChunk(image.id, data)

    def imageClosed(self, image: OutgoingImage) -> None:
        """
        An image's content ended: announce its size and checksum.
        """
        if self._over or self._link is None or self._open.pop(image.id, None) is None:
            return
        image.closed = self.clock()
        image.producer = None
        self._unacked[image.id] = image
        c = image.checksum
        self._manifest[(image.snapshotId, image.name)] = ManifestEntry(image.snapshotId, image.name, c.size, c.crc)
        if self.local is not None and image.data is not None:
            image.data.close()
            self.local.addVerified(Image(image.snapshotId, image.name, image.data, c.crc))
        self._link.sendClose(image.id, c.size, c.crc)
        self._maybeDone()

    def finish(self) -> None:
        """
        See L{IImageSink.finish}.
        """
        self._finishing = True
        self._maybeDone()

    def abort(self, reason: str) -> None:
        """
        See L{IImageSink.abort}.
        """
        if self._over:
            return
        if self._link is not None:
            self._link.sendAbort(reason)
        self._fail(f"aborted: {reason}")

    def _maybeDone(self) -> None:
        if self._over or self._doneSent or self._link is None:
            return
        if self._finishing and not self._open:
            self._doneSent = True
            entries = list(self._manifest.values())
            total = sum(e.size for e in entries)
            self.log.info(
                "session {session}: dump finished, {images} images, {bytes} bytes; final handshake",
                session=self.name, images=len(entries), bytes=total,
            )
            self._link.sendDone(len(entries), total, manifestDigest(entries))

    # Calls from the link.

    def accepted(self, link: ILinkSender) -> None:
        """
        The cache accepted the session on C{link}.
        """
        if self._over:
            return
        if self._link is not None:
            self._fail("the cache accepted the session twice")
            return
        self._link = link
        self.log.info("session {session}: cache accepted the link", session=self.name)
        self.ready.callback(None)
        self.release("link")
        self._maybeDone()

    def acked(self, imageId: int) -> None:
        """
        The cache verified an image.
        """
        image = self._unacked.pop(imageId, None)
        if image is None:
            self._fail(f"cache acknowledged image {imageId}, which is not awaiting it")
            return
        self._ackObservers.tell(image)
        seconds = (image.closed or image.opened) - image.opened
        if logsImage(image.checksum.size, self.verbose):
            self.log.info(
                "session {session}: image {name} acknowledged, {size} bytes in {seconds:.3f} s ({rate:.1f} MB/s)",
                session=self.name, name=image.name, snapshot=image.snapshotId,
                size=image.checksum.size, seconds=seconds, rate=rate(image.checksum.size, seconds),
            )

    def doneOk(self) -> None:
        """
        The cache confirmed the final handshake.
        """
        if self._over:
            return
        if not self._doneSent or self._unacked:
            self._fail("cache confirmed a final handshake that was not complete")
            return
        self._over = True
        total = sum(e.size for e in self._manifest.values())
        seconds = self.clock() - self._started
        outcome = SessionOutcome(self.name, len(self._manifest), total, seconds, self.bytesOnLink)
        self.log.info(
            "session {session}: complete, cache confirmed {images} images, {bytes} bytes "
            "in {seconds:.3f} s ({rate:.1f} MB/s); {linkBytes} bytes on the link",
            session=self.name, images=outcome.images, bytes=total, seconds=seconds,
            rate=rate(total, seconds), linkBytes=self.bytesOnLink,
        )
        self._overObservers.tellLast(outcome)
        self.result.callback(outcome)

    def failed(self, reason: str) -> None:
        """
        The cache refused the session, an image, or the final handshake, or
        the link broke.
        """
        self._fail(reason)

    @property
    def openImages(self) -> int:
        """
        @return: How many images CRIU is writing now.
        """
        return len(self._open)

    def addAckObserver(self, observer: Callable[[OutgoingImage], None]) -> None:
        """
        Call C{observer} with each image once the cache verified it.
        """
        self._ackObservers.add(observer)

    def addOverObserver(self, observer: Callable[[Union[SessionOutcome, Failure]], None]) -> None:
        """
        Call C{observer} with the L{SessionOutcome}, or the L{Failure} with
        L{SessionError}, when the session is over; unlike L{result}, any
        number of observers may watch.
        """
        self._overObservers.add(observer)

    def _fail(self, reason: str) -> None:
        if self._over:
            return
        self._over = True
        self.log.error("session {session} failed: {reason}", session=self.name, reason=reason)
        error = SessionError(reason)
        if not self.ready.called:
            self.ready.errback(error)
        self._overObservers.tellLast(Failure(error))
        self.result.errback(error)

    @property
    def over(self) -> bool:
        """
        Whether the session completed or failed.
        """
        return self._over

    # Backpressure: the image producers run only while nothing holds them.

    @property
    def paused(self) -> bool:
        """
        Whether anything holds the image producers.
        """
        return bool(self._holds)

    def hold(self, reason: str) -> None:
        """
        Stop every image's producer until C{reason} is released.

        @param reason: C{"link"} (no link), C{"send"} (the link's buffer is
            full), C{"window"} (too much unacknowledged), or another cause.
        """
        if reason in self._holds:
            return
        self._holds.add(reason)
        if len(self._holds) == 1:
            for image in self._open.values():
                if image.producer is not None:
                    image.producer.pauseProducing()

    def release(self, reason: str) -> None:
        """
        C{reason} no longer holds the producers; they go on if nothing else
        does.
        """
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if self._holds or self._link is None or self._over:
            return
        for image in list(self._open.values()):
            if image.producer is not None:
                image.producer.resumeProducing()

    def pause(self) -> None:
        """
        The link's send buffer is full: hold every image's producer.
        """
        self.pushedBack = self.clock()
        self.hold("send")

    def resume(self) -> None:
        """
        The link's send buffer drained.
        """
        self.release("send")
