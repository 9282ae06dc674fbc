# -*- test-case-name: tests.proxy.test_compresspolicy -*-
"""
When C{--compress auto} compresses a chunk (L{AutoPolicy}), from what it
measures: no clock of its own, no I/O.

Sending raw, a migration moves at the link's rate L (the cache's
acknowledgements, while the link is what holds the dump back). Compressing,
it moves at the smaller of the compressor's speed C and L times the ratio r
the data shrinks by. So compression pays when min(C, L * r) beats L by a
margin: on a 1 Gbit link (L about 118 MB/s) heap memory (r about 7, C about
650 MB/s on one core) goes 5 times faster compressed; on loopback or a 10
Gbit link (L over 1 GB/s) or on random memory (r = 1) raw is faster. C and
r are measured on the chunks compressed (a raw stretch still compresses one
chunk in L{PROBE_EVERY} to keep them current), L only while the link is
the bottleneck and the chunks go raw: a link that keeps up gives no reason
to compress. While compressed chunks are what the link holds back, the
stream's rate in image bytes is measured too, and counts as C when lower:
the cache's decoding, or threads short of a core, may be the bottleneck
then, and compressing must still beat raw.
"""

from __future__ import annotations

from typing import Optional

#: How much faster compression must make the migration, by the model, to be
#: used: the model's error and the CPU it costs need a margin.
MARGIN = 1.15

#: In a raw stretch, one chunk in this many is compressed anyway, to keep
#: the compressor's speed and ratio measured.
PROBE_EVERY = 32

#: The weight of each new measure in the running averages.
WEIGHT = 0.2

#: The least time over which the link's rate is measured.
RATE_INTERVAL = 0.05


def _average(old: Optional[float], new: float) -> float:
    return new if old is None else old + WEIGHT * (new - old)


class AutoPolicy:
    """
    See the module docstring.

    @ivar linkRate: The link's rate while it was the bottleneck, bytes per
        second on the wire; None until measured.
    @ivar speed: The compressor's speed, image bytes per second per chunk
        compressed; None until measured.
    @ivar ratio: Image bytes per byte sent for the chunks compressed.
    """

    def __init__(self) -> None:
        self.linkRate: Optional[float] = None
        self.speed: Optional[float] = None
        self.packedRate: Optional[float] = None
        self.ratio = 1.0
        self.packing = False
        self._mark: Optional[tuple[float, int, bool]] = None
        self._sinceProbe = 0

    def acked(self, now: float, received: int, congested: bool) -> None:
        """
        The cache has taken C{received} bytes of the stream by C{now}.

        @param congested: Whether the link held the stream back meanwhile
            (its unacknowledged bytes pile up, or the transport pushed
            back): only then is its rate the link's.
        """
        mark = self._mark
        if not congested or mark is None or mark[2] != self.packing:
            self._mark = (now, received, self.packing) if congested else None
            return
        then, before, packing = mark
        if now - then >= RATE_INTERVAL:
            rate = (received - before) / (now - then)
            if packing:
                self.packedRate = _average(self.packedRate, rate * self.ratio)
            else:
                self.linkRate = _average(self.linkRate, rate)
            self._mark = (now, received, packing)

    def compressed(self, size: int, sent: int, seconds: float) -> None:
        """
        A chunk of C{size} image bytes compressed to C{sent} in C{seconds}.
        """
        if size <= 0:
            return
        self.ratio = _average(self.ratio, size / max(sent, 1))
        if seconds > 0:
            self.speed = _average(self.speed, size / seconds)
            if not self.packing and self.packedRate is not None:
                # A rate measured while compressing is not measured again
                # until compression resumes: let probes wear it off.
                self.packedRate = _average(self.packedRate, size / seconds)

    def gain(self) -> Optional[float]:
        """
        @return: How much faster compressing would move the stream, by the
            model; None while something is not measured.
        """
        if self.linkRate is None or self.speed is None or self.linkRate <= 0:
            return None
        speed = self.speed if self.packedRate is None else min(self.speed, self.packedRate)
        return min(speed, self.linkRate * self.ratio) / self.linkRate

    def compress(self, congested: bool) -> bool:
        """
        @param congested: Whether the link holds the stream back now.
        @return: Whether to compress the next chunk.
        """
        gain = self.gain()
        self.packing = gain is not None and gain >= MARGIN
        if self.packing or not congested:
            return self.packing
        # The link is the bottleneck and compression has not proven itself
        # (or not yet been tried): try a chunk now and then.
        self._sinceProbe += 1
        if self.speed is None or self._sinceProbe >= PROBE_EVERY:
            self._sinceProbe = 0
            return True
        return False
