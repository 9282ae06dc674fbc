# -*- test-case-name: tests.local.test_remote -*-
"""
The seams of CRIU's local side: what a remote-protocol connection
(L{imgrelay.local.remote.RemoteProtocol}) asks of the side it serves.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class IRemoteBackend(Interface):
    """
    What one side does with the operations of CRIU's remote protocol.
    """

    ready = Attribute("A Deferred that fires once operations can be served.")

    def openImage(snapshotId: str, name: str, append: bool) -> Any:
        """
        A write or append begins.

        @return: A Deferred firing with the
            L{imgrelay.core.interfaces.IOutgoingImage} once its content may
            flow, or failing with L{imgrelay.core.errors.SessionError} if
            this side takes no images.
        """

    def readImage(snapshotId: str, name: str) -> Any:
        """
        @return: A Deferred firing with the L{imgrelay.core.store.Image}, or
            None for ENOENT.
        """

    def pushSnapshot(snapshotId: str) -> None:
        """
        Add to the snapshot list.

        @raise imgrelay.core.errors.SessionError: If this side takes no
            snapshots.
        """

    def snapshots() -> Any:
        """
        @return: A Deferred firing with the snapshot list (None: ENOENT).
        """

    def finish(openMode: int) -> None:
        """
        FINISH arrived: C{openMode} 1 from a dump, 0 from a restore.
        """

    def connectionOpened() -> None:
        """
        A local connection was accepted; its header is still to come.
        """

    def headerDone() -> None:
        """
        A connection counted by L{connectionOpened} has parsed its header,
        or ended without one.
        """

    def abort(reason: str) -> None:
        """
        An operation failed in a way that makes the session's images
        untrustworthy (a write cut short).
        """
