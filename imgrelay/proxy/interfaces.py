# -*- test-case-name: tests.proxy.test_session,tests.proxy.test_criulink -*-
"""
What a proxy session talks to and ends with: the link it sends through
(L{ILinkSender}, which imgrelay's link and CRIU's format both provide) and
its outcome (L{SessionOutcome}).
"""

from __future__ import annotations


import attrs
from zope.interface import Attribute, Interface



class ILinkSender(Interface):
    """
    What a proxy session sends on its link.
    """

    ring = Attribute(
        "The read buffers (an IReadBuffers) the link sends straight from, for"
        " the session's pipes to read into; None where the link copies what it"
        " is given."
    )

    def sendOpen(image: int, snapshotId: str, name: str, mode: int) -> None:
        """Announce a new image (C{mode}: CREATE, REPLACE or APPEND)."""

    def sendSnapshot(snapshotId: str) -> None:
        """Push a snapshot id onto the session's snapshot list."""

    def sendChunk(image: int, data: bytes) -> None:
        """Send some of an image's bytes."""

    def sendClose(image: int, size: int, crc: int) -> None:
        """Announce an image's end, size and checksum."""

    def sendDone(images: int, size: int, digest: bytes) -> None:
        """Begin the final handshake."""

    def sendAbort(reason: str) -> None:
        """Tell the cache the session is given up, and close."""


@attrs.frozen
class SessionOutcome:
    """
    A session the cache confirmed complete.

    @ivar linkBytes: What its image bytes came to on the link (fewer than
        C{bytes} when compressed).
    """

    name: str
    images: int
    bytes: int
    seconds: float
    linkBytes: int = 0
