# -*- test-case-name: tests.cache.test_unpack -*-
"""
Encoded chunks on the cache's side: L{PackedChunk} collects one chunk's
encoded payload (for L{imgrelay.cache.linkstate.CacheLinkState}, without
I/O), and L{StreamUnpacker} decodes each collected chunk off the reactor
while the session's stream waits, its framer held, so that everything after
the chunk is handled after the chunk's bytes are in their image.

One chunk is decoded at a time per stream: the link is not read meanwhile,
and the kernel's socket buffer keeps receiving. Decoding 1 MiB of Zstandard
takes about a millisecond; a 1 Gbit link brings the next compressed MiB in
about as long.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgrelay.wire.codecs import BadChunk, decode

if TYPE_CHECKING:
    from imgrelay.cache.resume import CacheStream

#: How one chunk is decoded: C{(encoding, payload, size)} to a L{Deferred}
#: of exactly C{size} bytes, or a failure (L{BadChunk}).
Decoder = Callable[[int, bytes, int], "Deferred[bytes]"]


def decodeInline(encoding: int, payload: bytes, size: int) -> Deferred[bytes]:
    """
    A L{Decoder} that decodes at once, on the calling thread (for tests,
    and for small embedders that start no threads).
    """
    return maybeDeferred(decode, encoding, payload, size)


@attrs.define
class PackedChunk:
    """
    An encoded chunk's payload, as it arrives.

    @ivar target: The image it belongs to (the state's record of it).
    @ivar encoding: How it is encoded.
    @ivar size: What it decodes to.
    @ivar payload: Its encoded bytes, the announced length of them.
    @ivar filled: How many have arrived.
    """

    target: Any
    encoding: int
    size: int
    payload: bytearray
    filled: int = 0

    @property
    def complete(self) -> bool:
        """
        Whether the whole payload arrived.
        """
        return self.filled == len(self.payload)

    def add(self, data: memoryview) -> None:
        """
        Bytes of the payload, in order.
        """
        self.payload[self.filled:self.filled + len(data)] = data
        self.filled += len(data)

    def space(self, wanted: int) -> memoryview:
        """
        @return: Where the next C{wanted} bytes go, to receive into and then
            L{filled} with L{received}.
        """
        return memoryview(self.payload)[self.filled:self.filled + wanted]

    def received(self, n: int) -> None:
        """
        C{n} bytes were received at the start of the last L{space}.
        """
        self.filled += n


class _Link(Protocol):
    def unpacked(self) -> None: ...

    def dropSession(self, reason: str) -> None: ...


class StreamUnpacker:
    """
    Decodes a stream's collected chunks one at a time (see the module
    docstring).

    @ivar busy: Whether a chunk is being decoded: the stream's framer is
        held, and its links do not read.
    """

    log = Logger()

    def __init__(self, stream: CacheStream, decoder: Decoder) -> None:
        self._stream = stream
        self._decoder = decoder
        self.busy = False
        self._kicking = False

    def kick(self) -> None:
        """
        Decode the chunk the stream's state holds, if any (its framer is
        held already); with a decoder that answers at once, go on while the
        released stream brings more.
        """
        if self._kicking:
            return
        self._kicking = True
        try:
            while not self.busy:
                job = self._stream.state.takeUnpack()
                if job is None:
                    return
                self.busy = True
                self._decoder(*job).addCallbacks(self._decoded, self._failed)
        finally:
            self._kicking = False

    def _link(self) -> Optional[_Link]:
        link: Optional[_Link] = self._stream.link  # type: ignore[assignment]
        return link

    def _decoded(self, data: bytes) -> None:
        self.busy = False
        stream = self._stream
        if stream.session.final:
            return
        stream.state.unpacked(data)
        stream.framer.release()
        link = self._link()
        if link is not None:
            # It parses what was held (which may hold another chunk, and
            # kick again) and reads again.
            link.unpacked()

    def _failed(self, failure: Failure) -> None:
        self.busy = False
        if not failure.check(BadChunk):
            self.log.failure("decoding a chunk failed", failure)
        reason = failure.getErrorMessage()
        link = self._link()
        if link is not None:
            link.dropSession(reason)
        else:
            self._stream.state.lost(reason)
