# -*- test-case-name: tests.core.test_store -*-
"""
The cache's memory: sessions, their verified images, and the restore
requests waiting for images that are not verified yet.

Nothing here does I/O; a waiter is a L{Deferred} that fires when the image
is verified, or with None once it is certain it never will be.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Callable, Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from imgrelay.core.observers import Observers
from imgrelay.core.imagedata import ImageData
from imgrelay.core.integrity import ManifestEntry
from imgrelay.core.interfaces import IImageSource

@attrs.define
class Image:
    """
    A verified image.

    @ivar snapshotId: The snapshot it belongs to (C{""} for C{--stream}).
    @ivar name: Its file name.
    @ivar data: Its content.
    @ivar crc: Its CRC-32C.
    """

    snapshotId: str
    name: str
    data: ImageData
    crc: int

    @property
    def size(self) -> int:
        """
        @return: The image's length.
        """
        return self.data.size

    def manifestEntry(self) -> ManifestEntry:
        """
        @return: What the final handshake counts of this image.
        """
        return ManifestEntry(self.snapshotId, self.name, self.size, self.crc)


class SessionState(Enum):
    """
    Where a session stands.
    """

    WAITING = "waiting"  # no link has claimed it yet
    RECEIVING = "receiving"
    COMPLETE = "complete"
    FAILED = "failed"


Key = tuple[str, str]


@implementer(IImageSource)
class Session:
    """
    One migration as the cache holds it.

    @ivar name: The name the proxy gave, None until a link claims it.
    @ivar state: A L{SessionState}.
    @ivar failure: Why it failed, if it did.
    @ivar failureKind: What kind of error failed it: C{checksum},
        C{protocol} or C{other}.
    @ivar received: Bytes of image content the link brought so far,
        verified or not.
    @ivar images: The verified images by (snapshot id, name): the latest
        version of each.
    @ivar snapshots: The snapshot list (CRIU's "parent"), in push order.
    """

    log = Logger()

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.name: Optional[str] = None
        self.state = SessionState.WAITING
        self.failure: Optional[str] = None
        self.failureKind: Optional[str] = None
        self.received = 0
        #: What the image content came to on the link (compressed or not).
        self.linkBytes = 0
        self._imageObservers: Observers[Image] = Observers()
        self.images: dict[Key, Image] = {}
        self.snapshots: list[str] = []
        self._arriving: dict[Key, int] = {}
        self._waiters: dict[Key, list[Deferred[Optional[Image]]]] = {}
        self._snapshotWaiters: list[Deferred[Optional[list[str]]]] = []
        self._clock = clock
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self.restores = 0
        #: How many restores attached to it in all.
        self.restoresAttached = 0
        self.consumed = False
        #: Answer no read before the session is final (a link that cannot
        #: tell when a later version of an image is coming).
        self.readsWaitForEnd = False
        self._finalObservers: Observers[Session] = Observers()

    @property
    def final(self) -> bool:
        """
        Whether the session is complete or failed: nothing will change.
        """
        return self.state in (SessionState.COMPLETE, SessionState.FAILED)

    @property
    def bytes(self) -> int:
        """
        @return: The bytes of every verified image.
        """
        return sum(i.size for i in self.images.values())

    @property
    def inFlight(self) -> int:
        """
        @return: How many images are on their way, not verified yet.
        """
        return sum(self._arriving.values())

    def countReceived(self, n: int) -> None:
        """
        C{n} more bytes of image content arrived (for the statistics).
        """
        self.received += n

    def addImageObserver(self, observer: Callable[[Image], None]) -> None:
        """
        Call C{observer} with each image once it is verified.
        """
        self._imageObservers.add(observer)

    def claim(self, name: str) -> None:
        """
        A link starts sending this session.
        """
        self.name = name
        self.state = SessionState.RECEIVING
        self.started = self._clock()

    def has(self, snapshotId: str, name: str) -> bool:
        """
        @return: Whether that image is verified here.
        """
        return (snapshotId, name) in self.images

    def expects(self, snapshotId: str, name: str) -> bool:
        """
        Whether that image is verified here or on its way.
        """
        key = (snapshotId, name)
        return key in self.images or key in self._arriving

    def arriving(self, snapshotId: str, name: str) -> None:
        """
        A new version of that image is on its way: requests for it wait for
        that version rather than take an earlier one.
        """
        key = (snapshotId, name)
        self._arriving[key] = self._arriving.get(key, 0) + 1

    def notArriving(self, snapshotId: str, name: str) -> None:
        """
        Undo one L{arriving}: that version will not come (or is announced
        again).
        """
        key = (snapshotId, name)
        left = self._arriving.get(key, 0) - 1
        if left > 0:
            self._arriving[key] = left
        else:
            self._arriving.pop(key, None)

    def addVerified(self, image: Image) -> None:
        """
        Keep a verified image (replacing any earlier version) and wake
        everyone waiting for it.
        """
        key = (image.snapshotId, image.name)
        self.images[key] = image
        self.notArriving(*key)
        self._imageObservers.tell(image)
        if key in self._arriving or self.readsWaitForEnd:
            # A later version is (or may be) on its way: requests wait.
            return
        for d in self._waiters.pop(key, []):
            d.callback(image)

    def waitImage(self, snapshotId: str, name: str) -> Deferred[Optional[Image]]:
        """
        See L{IImageSource.waitImage}.
        """
        key = (snapshotId, name)
        image = self.images.get(key)
        if self.final or (image is not None and key not in self._arriving and not self.readsWaitForEnd):
            return succeed(image)
        d: Deferred[Optional[Image]] = Deferred()
        self._waiters.setdefault(key, []).append(d)
        return d

    def pushSnapshot(self, snapshotId: str) -> None:
        """
        Add a snapshot id to the snapshot list.
        """
        self.snapshots.append(snapshotId)

    def waitSnapshots(self) -> Deferred[Optional[list[str]]]:
        """
        The complete snapshot list, once the session is complete (None if
        it failed): only then is it certain no snapshot is still to come.
        """
        if self.final:
            return succeed(list(self.snapshots) if self.state is SessionState.COMPLETE else None)
        d: Deferred[Optional[list[str]]] = Deferred()
        self._snapshotWaiters.append(d)
        return d

    @property
    def waiting(self) -> int:
        """
        @return: How many requests wait for an image.
        """
        return sum(len(ds) for ds in self._waiters.values())

    def addFinalObserver(self, observer: Callable[[Session], None]) -> None:
        """
        Call C{observer} with this session once it is complete or failed.
        """
        self._finalObservers.add(observer)

    def _end(self, state: SessionState) -> None:
        self.state = state
        self.ended = self._clock()
        waiters, self._waiters = self._waiters, {}
        for key, ds in waiters.items():
            for d in ds:
                d.callback(self.images.get(key))
        snapshotWaiters, self._snapshotWaiters = self._snapshotWaiters, []
        for s in snapshotWaiters:
            s.callback(list(self.snapshots) if state is SessionState.COMPLETE else None)
        self._finalObservers.tellLast(self)

    def complete(self) -> None:
        """
        The final handshake succeeded: images not here now never will be.
        """
        self._end(SessionState.COMPLETE)

    def fail(self, reason: str, kind: str = "other") -> None:
        """
        The session failed: no image of it will be served from now on, and
        every request waiting is told the image does not exist.

        @param reason: Why.
        @param kind: C{"checksum"} (an image's size or CRC-32C was wrong),
            C{"protocol"} (the link broke the protocol or a limit), or
            C{"other"}.
        """
        if self.final:
            return
        self.failure = reason
        self.failureKind = kind
        self.images.clear()
        self._end(SessionState.FAILED)
