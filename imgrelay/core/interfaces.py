# -*- test-case-name: tests.core.test_store,tests.proxy.test_session -*-
"""
The seams between imgrelay's local protocols (what CRIU speaks) and its link
(what the proxy and cache speak), so that either local protocol can sit on
either end.
"""

from __future__ import annotations

from typing import Optional

from zope.interface import Attribute, Interface


class IImageSink(Interface):
    """
    Where a capture-side local protocol puts the images CRIU hands it: one
    migration session, on the proxy.
    """

    ready = Attribute(
        "A Deferred that fires with None once images can be opened (the "
        "link was accepted), or fails if the session failed first."
    )

    result = Attribute(
        "A Deferred that fires once the far side confirmed the session "
        "complete, or fails with imgrelay.core.errors.SessionError."
    )

    paused = Attribute("Whether image producers are to be held now.")

    def openImage(snapshotId: str, name: str, mode: int = 0) -> "IOutgoingImage":
        """
        Begin an image; C{mode} (optional, CREATE by default) is one of
        L{imgrelay.wire.link}'s CREATE, REPLACE or APPEND.

        @raise imgrelay.core.names.BadName: For a name that is not acceptable.
        @raise imgrelay.core.errors.SessionError: If the session cannot take it.
        """

    def pushSnapshot(snapshotId: str) -> None:
        """
        Add a snapshot id to the session's snapshot list.
        """

    def finish() -> None:
        """
        The local side will open no more images; the session completes once
        every open image is closed and the far side confirms.
        """

    def abort(reason: str) -> None:
        """
        Give the session up, telling the far side why.
        """


class IReadBuffers(Interface):
    """
    Buffers a pipe reader reads into and hands on as views, each used again
    once the link has sent what was read into it (the proxy's
    L{imgrelay.transport.pipes.BufferRing}).
    """

    copyBelow = Attribute(
        "A read shorter than this many bytes is copied out, and its buffer "
        "given back at once."
    )

    def take() -> bytearray:
        """
        @return: A buffer free to read into.
        """

    def giveBack(buffer: bytearray) -> None:
        """
        C{buffer} is free again at once: what was read into it was copied.
        """

    def handedOn(buffer: bytearray) -> None:
        """
        What was read into C{buffer} was handed to the link: it is free
        once the link sent it.
        """


class IOutgoingImage(Interface):
    """
    One image on its way from a capture-side protocol to the link.
    """

    name = Attribute("The image's file name.")

    ring: Optional[IReadBuffers] = Attribute(
        "The L{IReadBuffers} to read this image's pipe into, when the link "
        "sends straight from them; None to read into new bytes."
    )

    def attachProducer(producer: object) -> None:
        """
        Name the L{twisted.internet.interfaces.IPushProducer} that feeds this
        image (its pipe reader), so the link can pause it when it is full.
        """

    def write(data: bytes) -> None:
        """
        The image's next bytes.
        """

    def close() -> None:
        """
        The image's content ended (EOF on its pipe).
        """


class IImageSource(Interface):
    """
    What a serve-side local protocol reads images from: one session in the
    cache's store.
    """

    def waitImage(snapshotId: str, name: str) -> object:
        """
        A Deferred that fires with the verified L{imgrelay.core.store.Image}, or
        with None once it is certain the image will never be there (the
        session completed without it, or failed).
        """


class ISessionClaims(Interface):
    """
    Where a cache's link obtains the session a proxy names in its hello:
    one images directory's slot, or a registry of sessions by name.
    """

    def claim(name: str) -> "object":
        """
        A proxy starts session C{name}.

        @return: The L{imgrelay.core.store.Session} its link fills.
        @raise imgrelay.core.errors.SessionError: If it cannot be taken now (the
            link is refused with the message).
        """
