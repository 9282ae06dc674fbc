# -*- test-case-name: tests.proxy.test_packer -*-
"""
Link compression on the proxy's side: L{Packer} stands between a session
and its L{LinkStream} and compresses chunks in the daemon's threads, in
order. L{Compression} is what a proxy was told (C{--compress}); L{choose}
agrees it with what the cache offers.

Order: the stream is one sequence, so while any chunk is being compressed
everything the session sends after it (other chunks, closes, the done)
waits in a queue, and goes out once what is ahead of it has. A chunk that
waits is copied off the pipe's read buffer (which is used again once the
link has sent what was queued before it was handed on); a raw chunk with
nothing ahead of it goes straight to the link, uncopied, as without
compression. At most L{MAX_PENDING} chunks are compressed at once: beyond,
the session's pipes are held, so CRIU waits on its pipe, as it does on a
slow link.

A compressed chunk that does not shrink to L{SHRINK} of its size goes raw.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter
from typing import Any, Callable, Optional, Union

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.proxy.compresspolicy import AutoPolicy, FixedPolicy
from imgrelay.proxy.interfaces import ILinkSender
from imgrelay.wire.codecs import LZ4, NAMES, RAW, ZSTD, encode, parse
from imgrelay.wire.link import MAX_CHUNK

#: Chunks being compressed at once, per session.
MAX_PENDING = 4

#: A compressed chunk must come to at most this share of its size.
SHRINK = 0.9

#: The kernel's measure of the link is read at most this often (seconds):
#: a chunk can come every millisecond, and the policy takes the median of
#: what it read over 0.2 s.
READ_LINK_EVERY = 0.005

#: A try on the side compresses this much of its chunk, not all of it: the
#: speed and ratio of a quarter of a MiB of the data are those of the MiB,
#: and the tries, which a link that keeps up still sees a few of, cost the
#: shared cores a quarter as much.
PROBE_SIZE = 256 << 10

#: What C{--compress} takes.
MODES = ("auto", "zstd", "lz4", "none")


@attrs.frozen
class Compression:
    """
    How a proxy compresses its links.

    @ivar mode: C{"auto"}, C{"zstd"}, C{"lz4"} or C{"none"}.
    @ivar run: Runs C{work(*args)} in the daemon's threads, giving a
        L{Deferred} of its result.
    """

    mode: str
    run: Callable[..., "Deferred[Any]"]


def choose(mode: str, offered: list[int]) -> tuple[list[int], str]:
    """
    Agree on the codecs.

    @param mode: The proxy's C{--compress}.
    @param offered: What the cache's accept lists.
    @return: The codecs to use (none for raw chunks only), and why, for
        the log.
    """
    names = ", ".join(NAMES.get(e, str(e)) for e in offered) or "nothing"
    if mode == "none":
        return [], "none (--compress none)"
    if mode == "auto":
        usable = [e for e in (ZSTD, LZ4) if e in offered]
        if not usable:
            return [], f"none: the cache decodes no compression (it offers {names})"
        which = " or ".join(NAMES[e] for e in usable)
        return usable, f"{which} when it pays (--compress auto; the cache decodes {names})"
    wanted = parse(mode)
    if wanted in offered:
        return [wanted], f"{mode} (--compress {mode})"
    return [], f"none: --compress {mode}, but the cache decodes only {names}"


def _compress(encoding: int, data: bytes) -> tuple[bytes, float]:
    began = perf_counter()
    payload = encode(encoding, data)
    return payload, perf_counter() - began


class _Waiting:
    """
    Something queued behind a chunk being compressed: C{emit} sends it once
    set (a compressed chunk's is set when its compression ends).
    """

    def __init__(self, emit: Optional[Callable[[], None]] = None) -> None:
        self.emit = emit


@implementer(ILinkSender)
class Packer:
    """
    See the module docstring.
    """

    log = Logger()

    def __init__(
        self, stream: Any, session: Any, policy: Union[AutoPolicy, FixedPolicy], run: Callable[..., Deferred[Any]],
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        """
        @param stream: The session's L{imgrelay.proxy.stream.LinkStream}.
        @param session: The session, whose pipes are held while too much
            is being compressed.
        @param policy: Says what each chunk is sent with (C{RAW} or a
            codec), and takes the measures.
        @param run: Runs work in the daemon's threads.
        @param clock: The time, for the policy's measures.
        """
        self._stream = stream
        self._session = session
        self._run = run
        self.policy = policy
        self._clock = clock
        self._queue: deque[_Waiting] = deque()
        self._pending = 0
        self._failed = False
        self._probing = False
        self._rwndLimited = 0
        self._lastReading = float("-inf")
        self.ring = stream.ring

    # ILinkSender

    def sendOpen(self, image: int, snapshotId: str, name: str, mode: int) -> None:
        self._inOrder(lambda: self._stream.sendOpen(image, snapshotId, name, mode))

    def sendSnapshot(self, snapshotId: str) -> None:
        self._inOrder(lambda: self._stream.sendSnapshot(snapshotId))

    def sendClose(self, image: int, size: int, crc: int) -> None:
        self._inOrder(lambda: self._stream.sendClose(image, size, crc))

    def sendDone(self, images: int, size: int, digest: bytes) -> None:
        self._inOrder(lambda: self._stream.sendDone(images, size, digest))

    def sendAbort(self, reason: str) -> None:
        # Nothing queued matters any more.
        self._queue.clear()
        self._stream.sendAbort(reason)

    def sendChunk(self, image: int, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), MAX_CHUNK):
            self._chunk(image, view[start:start + MAX_CHUNK])

    # The queue.

    def _inOrder(self, emit: Callable[[], None]) -> None:
        if self._queue:
            self._queue.append(_Waiting(emit))
        else:
            emit()

    def _flush(self) -> None:
        queue = self._queue
        while queue and queue[0].emit is not None:
            emit = queue.popleft().emit
            assert emit is not None
            emit()

    def _chunk(self, image: int, data: memoryview) -> None:
        if not data:
            return
        if self._failed:
            encoding, probe = RAW, None
        else:
            now, congested = self._clock(), self._stream.congested
            self._measureLink(now, congested)
            encoding, probe = self.policy.choose(congested)
            self.policy.fed(now, len(data), congested or self._pending >= MAX_PENDING - 1)
        if probe is not None and not self._probing:
            self._probe(probe, bytes(data[:PROBE_SIZE]))
        if encoding == RAW:
            if self._queue:
                copy = bytes(data)
                self._queue.append(_Waiting(lambda: self._stream.sendChunk(image, copy)))
            else:
                self._stream.sendChunk(image, data)
            return
        copy = bytes(data)
        waiting = _Waiting()
        self._queue.append(waiting)
        self._pending += 1
        if self._pending >= MAX_PENDING:
            self._session.hold("compress")
        d = self._run(_compress, encoding, copy)
        d.addCallbacks(
            lambda result: self._compressed(waiting, image, encoding, copy, result),
            lambda failure: self._notCompressed(waiting, image, copy, failure),
        )

    def _probe(self, encoding: int, data: bytes) -> None:
        """
        Compress a copy of a chunk on the side, for the policy's measures;
        one at a time.
        """
        self._probing = True

        def measured(result: tuple[bytes, float]) -> None:
            self.policy.compressed(encoding, len(data), len(result[0]), result[1])

        d = self._run(_compress, encoding, data)
        d.addCallbacks(measured, lambda failure: None)
        d.addBoth(lambda _: setattr(self, "_probing", False))

    def _compressed(
        self, waiting: _Waiting, image: int, encoding: int, data: bytes, result: tuple[bytes, float],
    ) -> None:
        payload, seconds = result
        self.policy.compressed(encoding, len(data), len(payload), seconds)
        if len(payload) <= SHRINK * len(data):
            waiting.emit = lambda: self._stream.sendPackedChunk(image, encoding, len(data), payload)
        else:
            waiting.emit = lambda: self._stream.sendChunk(image, data)
        self._done()

    def _notCompressed(self, waiting: _Waiting, image: int, data: bytes, failure: Failure) -> None:
        if not self._failed:
            self._failed = True
            self.log.failure("session {session}: compression failed; sending raw from now on", failure,
                             session=self._session.name)
        waiting.emit = lambda: self._stream.sendChunk(image, data)
        self._done()

    def _done(self) -> None:
        self._pending -= 1
        self._flush()
        if self._pending < MAX_PENDING:
            self._session.release("compress")

    # Measures.

    def _measureLink(self, now: float, congested: bool) -> None:
        """
        Give the policy the kernel's measure of the link, when the link was
        what limited the connection: the sender had more to send, the
        receiver's window did not hold it back since the last measure, and
        the link pushed back lately (the first bytes of a connection go out
        faster than the link's rate, through its queues: 346 to 1242 MB/s
        on a 1 Gbit link before it pushed back).
        """
        if now - self._lastReading < READ_LINK_EVERY:
            return
        self._lastReading = now
        reading = self._stream.delivery()
        if reading is None:
            return
        rwnd, self._rwndLimited = self._rwndLimited, reading.rwndLimited
        if not reading.appLimited and reading.rwndLimited == rwnd and congested:
            self.policy.delivered(now, reading.rate)

    def acked(self, received: int) -> None:
        """
        The cache took the stream up to C{received}: for the policy.
        """
        self.policy.acked(self._clock(), received, self._stream.congested)
