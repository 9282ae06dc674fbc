# -*- test-case-name: tests.local.test_remote,tests.scenarios.test_remoteflow -*-
"""
CRIU's remote protocol on the proxy (L{imgrelay.local.remote} calls it): a
dump's writes go to the session's link, and its reads (a pre-dump's
parent images) are answered from the proxy's own copy.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.core.interfaces import IOutgoingImage, IReadBuffers
from imgrelay.wire.link import APPEND, REPLACE
from imgrelay.proxy.session import ProxySession
from imgrelay.local.interfaces import IRemoteBackend
from imgrelay.wire.criu import O_RDONLY
from imgrelay.core.store import Image

#: A dump (not a pre-dump) writes this image; its FINISH ends the session.
FULL_DUMP_MARK = "pstree.img"


@implementer(IOutgoingImage)
class _Version:
    """
    One version of an image: when it closes, the next may begin.
    """

    def __init__(self, image: IOutgoingImage, closed: Callable[[], None]) -> None:
        self._image = image
        self._closed = closed
        self.name = image.name

    @property
    def ring(self) -> Optional[IReadBuffers]:
        return self._image.ring

    def attachProducer(self, producer: object) -> None:
        self._image.attachProducer(producer)

    def write(self, data: bytes) -> None:
        self._image.write(data)

    def close(self) -> None:
        self._image.close()
        self._closed()


@implementer(IRemoteBackend)
class ProxyRemoteBackend:
    """
    The dump side: one session for a whole migration, across the local
    connections of every pre-dump and of the final dump.

    A dump-side FINISH ends the session once a full dump was written (one
    that wrote C{pstree.img}, which pre-dumps do not); after a pre-dump it
    only ends that snapshot, and the session waits for the next.
    """

    log = Logger()

    def __init__(self, newSession: Callable[[], ProxySession]) -> None:
        """
        @param newSession: Starts a session (and its link).
        """
        self._newSession = newSession
        self._session: Optional[ProxySession] = None
        self._fullDump = False
        self._finished = False
        self._finishRequested = False
        self._headersPending = 0
        self._readyResult: Optional[object] = None
        self._readyWaiting: list[Deferred[None]] = []
        self._writing: dict[tuple[str, str], deque[Callable[[], None]]] = {}

    def _current(self) -> ProxySession:
        session = self._session
        if session is None or session.over or self._finished:
            session = self._session = self._newSession()
            self._fullDump = False
            self._finished = False
            self._finishRequested = False
            self._readyResult = None
            self._writing = {}
            session.ready.addBoth(self._readyFired, session)
            # Its end is logged and reported to the service's observers;
            # each local connection learns of a failure on its own.
            session.result.addErrback(lambda failure: None)
        return session

    @property
    def ready(self) -> Deferred[None]:
        """
        See L{IRemoteBackend.ready}: fires for each connection once the
        current session's link is accepted, or fails if it was not.
        """
        self._current()
        if self._readyResult is None:
            d: Deferred[None] = Deferred()
            self._readyWaiting.append(d)
            return d
        if isinstance(self._readyResult, Failure):
            return fail(self._readyResult)
        return succeed(None)

    def _readyFired(self, result: object, session: ProxySession) -> None:
        if session is not self._session:
            return
        self._readyResult = result if isinstance(result, Failure) else True
        waiting, self._readyWaiting = self._readyWaiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def openImage(self, snapshotId: str, name: str, append: bool) -> Deferred[IOutgoingImage]:
        """
        See L{IRemoteBackend.openImage}. CRIU may write an image again (or
        append to it) before the helper has read the earlier version's pipe
        to its end: versions of one image are sent one after the other, in
        the order CRIU opened them, the later one waiting in its pipe.
        """
        if name == FULL_DUMP_MARK:
            self._fullDump = True
        session = self._current()
        key = (snapshotId, name)
        opened: Deferred[IOutgoingImage] = Deferred()
        local = session.local

        def start() -> None:
            if queued and local is not None:
                local.notArriving(snapshotId, name)  # openImage announces it
            try:
                image = session.openImage(snapshotId, name, APPEND if append else REPLACE)
            except Exception:
                self._next(key)
                opened.errback()
                return
            opened.callback(_Version(image, lambda: self._next(key)))

        waiting = self._writing.get(key)
        queued = waiting is not None
        if waiting is None:
            self._writing[key] = deque()
            start()
        else:
            if local is not None:
                # Reads of the image wait for this version from now on.
                local.arriving(snapshotId, name)
            waiting.append(start)
        return opened

    def _next(self, key: tuple[str, str]) -> None:
        waiting = self._writing.get(key)
        if waiting:
            waiting.popleft()()
        else:
            self._writing.pop(key, None)
        self._maybeFinish()

    def readImage(self, snapshotId: str, name: str) -> Deferred[Optional[Image]]:
        """
        See L{IRemoteBackend.readImage}: from what this proxy holds.
        """
        return self._current().localImage(snapshotId, name)

    def pushSnapshot(self, snapshotId: str) -> None:
        """
        See L{IRemoteBackend.pushSnapshot}.
        """
        self._current().pushSnapshot(snapshotId)

    def snapshots(self) -> Deferred[Optional[list[str]]]:
        """
        See L{IRemoteBackend.snapshots}: every id pushed so far.
        """
        return succeed(list(self._current().snapshots))

    def connectionOpened(self) -> None:
        """
        See L{IRemoteBackend.connectionOpened}.
        """
        self._headersPending += 1

    def headerDone(self) -> None:
        """
        See L{IRemoteBackend.headerDone}.
        """
        self._headersPending -= 1
        self._maybeFinish()

    def _maybeFinish(self) -> None:
        # A FINISH must not overtake a write: CRIU opens each image on its
        # own connection, and the reactor may read FINISH's before an
        # earlier one's header, or before a later version of an image could
        # begin.
        session = self._session
        if not self._finishRequested or session is None or self._finished:
            return
        if self._headersPending or any(self._writing.values()):
            return
        self._finished = True
        session.finish()

    def finish(self, openMode: int) -> None:
        """
        See L{IRemoteBackend.finish}: a dump's FINISH completes the session
        once every write already begun has been opened on the link (the
        final handshake then waits for their pipes to end).
        """
        session = self._session
        if openMode == O_RDONLY or session is None:
            self.log.warn("FINISH (open mode {mode}) with no dump in progress; ignored", mode=openMode)
            return
        if self._fullDump:
            self.log.info("session {session}: dump finished; completing the session", session=session.name)
            self._finishRequested = True
            self._maybeFinish()
        else:
            self.log.info(
                "session {session}: pre-dump finished ({snapshots} snapshots); the session goes on",
                session=session.name, snapshots=len(session.snapshots),
            )

    def abort(self, reason: str) -> None:
        """
        See L{IRemoteBackend.abort}.
        """
        if self._session is not None:
            self._session.abort(reason)
