# -*- test-case-name: tests.local.test_remote,tests.scenarios.test_remoteflow -*-
"""
CRIU's remote protocol on the cache (L{imgrelay.local.remote} calls it): a
restore's reads wait for verified images of the slot's session.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from imgrelay.core.errors import SessionError
from imgrelay.core.interfaces import IOutgoingImage
from imgrelay.local.interfaces import IRemoteBackend
from imgrelay.core.store import Image, Session
from imgrelay.core.slot import SessionSlot

@implementer(IRemoteBackend)
class CacheRemoteBackend:
    """
    The restore side: reads from the slot's session, which a restore holds
    from its first connection to its FINISH.
    """

    log = Logger()

    def __init__(self, slot: SessionSlot) -> None:
        self._slot = slot
        self._session: Optional[Session] = None

    @property
    def ready(self) -> Deferred[None]:
        """
        See L{IRemoteBackend.ready}: always.
        """
        return succeed(None)

    def _attached(self) -> Session:
        if self._session is None:
            self._session = self._slot.attachRestore()
            self.log.info("restore connected (session {session})", session=self._session.name)
        return self._session

    def openImage(self, snapshotId: str, name: str, append: bool) -> Deferred[IOutgoingImage]:
        """
        See L{IRemoteBackend.openImage}: the restore side takes no images.
        """
        return fail(SessionError(f"the restore side's socket takes no writes ({name})"))

    def readImage(self, snapshotId: str, name: str) -> Deferred[Optional[Image]]:
        """
        See L{IRemoteBackend.readImage}: waits until verified, or until the
        session is over.
        """
        session = self._attached()

        def answered(image: Optional[Image]) -> Optional[Image]:
            if image is None and session.failure is not None:
                self.log.warn(
                    "restore asked for {name}: 'does not exist' because session {session} failed: {reason}",
                    name=name, session=session.name, reason=session.failure,
                )
            return image

        return session.waitImage(snapshotId, name).addCallback(answered)

    def pushSnapshot(self, snapshotId: str) -> None:
        """
        See L{IRemoteBackend.pushSnapshot}: not on the restore side.
        """
        raise SessionError("the restore side's socket takes no snapshot pushes")

    def snapshots(self) -> Deferred[Optional[list[str]]]:
        """
        See L{IRemoteBackend.snapshots}: the complete list.
        """
        return self._attached().waitSnapshots()

    def connectionOpened(self) -> None:
        """
        See L{IRemoteBackend.connectionOpened}: nothing waits on it here.
        """

    def headerDone(self) -> None:
        """
        See L{IRemoteBackend.headerDone}.
        """

    def finish(self, openMode: int) -> None:
        """
        See L{IRemoteBackend.finish}: a restore's FINISH ends it.
        """
        session, self._session = self._session, None
        if session is None:
            self.log.warn("FINISH (open mode {mode}) with no restore in progress; ignored", mode=openMode)
            return
        self.log.info("restore of session {session} finished", session=session.name)
        self._slot.detachRestore(session)

    def abort(self, reason: str) -> None:
        """
        See L{IRemoteBackend.abort}: nothing is written on this side.
        """
