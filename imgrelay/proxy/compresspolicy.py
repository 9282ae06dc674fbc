# -*- test-case-name: tests.proxy.test_compresspolicy -*-
"""
When C{--compress auto} compresses a chunk, and with what (L{AutoPolicy}),
from what it measures: no clock of its own, no I/O.

Sent raw, the stream moves at the link's rate L: the kernel's measure of
the connection's delivery whenever the link was what limited it, raw or
compressed (L{imgrelay.transport.tcpinfo}); without one (not Linux, not
TCP), the cache's acknowledgements while chunks go raw and the link holds
the stream back. Compressed with a codec, it moves at the smaller of what
that codec achieves, C, and L times the ratio r it shrinks the data by. So
a codec pays when min(C, L r) beats L by L{MARGIN}, and the codec that pays
most is used; the codec in use gives way to another only when that one
pays L{MARGIN} times more. C is the codec's speed on the chunks it
compressed, or, once measured, the lower rate at which image bytes entered
the stream while that codec was used and the stream held its source back
(its compressions at their limit, or the link congested): on two cores the
cache's decoding and CPU shared with CRIU can hold it well below the
compressor's own speed. That rate is taken where the bytes come in, a
chunk at a time: taken from the cache's acknowledgements of compressed
bytes, a few per interval, it read 400 MB/s in a traced 1 Gbit run whose
dump went at 530.

On a 1 Gbit link (L about 118 MB/s) heap memory (r 4 to 8) goes several
times faster compressed; on loopback or a 10 Gbit link (L over 1 GB/s),
or with random memory (r = 1), raw is faster. A link that keeps up gives
no reason to compress, and no chunk is compressed then. While raw, a chunk
in L{PROBE_EVERY} is compressed all the same (in L{PROBE_RARELY} when the
codecs are too slow for the link whatever the ratio), and while one codec
is used, the other is tried as often, to keep their measures current.
Such a try compresses a copy of the chunk's start on the side: the chunk
goes as chosen, without waiting for it.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Optional, Sequence

from imgrelay.wire.codecs import RAW

#: How much faster compression must make the stream, by the model, to be
#: used: the model's error and the CPU it costs need a margin.
MARGIN = 1.15

#: While a codec is not used, one chunk in this many tries it.
PROBE_EVERY = 32

#: ... or in this many, while even infinite shrinking could not pay.
PROBE_RARELY = 256

#: The weight of each new measure in the running averages.
WEIGHT = 0.2

#: The weight of a probe's speed in a codec's stream rate measured earlier.
WEAR = 0.01

#: The least time over which a rate is measured.
RATE_INTERVAL = 0.05

#: The kernel's measures of the link's rate are taken at their median
#: over this many seconds.
KERNEL_WINDOW = 0.2


def _average(old: Optional[float], new: float) -> float:
    return new if old is None else old + WEIGHT * (new - old)


class CodecStats:
    """
    What is known of one codec on this session's data.

    @ivar speed: Image bytes per second it compressed a chunk at.
    @ivar ratio: Image bytes per byte it sent.
    @ivar streamRate: Image bytes per second that entered the stream while
        it was used and the stream held its source back.
    """

    def __init__(self) -> None:
        self.speed: Optional[float] = None
        self.ratio: Optional[float] = None
        self.streamRate: Optional[float] = None
        self.sinceProbe = 0

    def achievable(self, linkRate: float) -> Optional[float]:
        """
        @return: The stream's rate with this codec, by the model; None
            until measured.
        """
        if self.speed is None or self.ratio is None:
            return None
        speed = self.speed if self.streamRate is None else min(self.speed, self.streamRate)
        return min(speed, linkRate * self.ratio)


class AutoPolicy:
    """
    See the module docstring.

    @ivar linkRate: The link's rate while it was the bottleneck, bytes per
        second (see L{delivered} and L{acked}); None until measured.
    @ivar codecs: What is known of each codec the cache decodes.
    @ivar current: What the last chunk was sent with (C{RAW} or a codec).
    """

    def __init__(self, encodings: Sequence[int]) -> None:
        """
        @param encodings: The codecs to choose from, in order of preference.
        """
        self.linkRate: Optional[float] = None
        self.codecs = {encoding: CodecStats() for encoding in encodings}
        self.current = RAW
        self._kernelRates: deque[tuple[float, float]] = deque()
        self._linkMark: Optional[tuple[float, int]] = None
        self._fedMark: Optional[tuple[float, int, int]] = None

    def acked(self, now: float, received: int, congested: bool) -> None:
        """
        The cache has taken C{received} bytes of the stream by C{now}.

        @param congested: Whether the link held the stream back meanwhile:
            only then, and while chunks go raw, is the rate the link's.
        """
        measuring = congested and self.current == RAW and not self._kernelRates
        mark = self._linkMark
        if not measuring or mark is None:
            self._linkMark = (now, received) if measuring else None
            return
        then, before = mark
        if now - then >= RATE_INTERVAL:
            self.linkRate = _average(self.linkRate, (received - before) / (now - then))
            self._linkMark = (now, received)

    def delivered(self, now: float, rate: float) -> None:
        """
        The kernel measured the link delivering C{rate} bytes per second
        at C{now}, while it seemed what limited the connection (neither the
        sender nor the receiver's window did, and it pushed back lately):
        the link's rate, whatever the chunks carried. From the first such
        measure on, the acknowledgements are not used for it.

        The link's rate is the median of these over the last
        L{KERNEL_WINDOW} seconds: single measures read wide of it both ways
        (over 10 Gbit, where the daemons rather than the link limit the
        stream, some read 440 MB/s of a link carrying 1.19 GB/s; on a link
        whose queue emptied, a burst can read far above its rate, and
        taking the highest, as TCP's BBR does, would then stop compression
        for the whole window).
        """
        window = self._kernelRates
        while window and window[0][0] < now - KERNEL_WINDOW:
            window.popleft()
        window.append((now, rate))
        self.linkRate = statistics.median(r for _, r in window)

    def fed(self, now: float, size: int, holding: bool) -> None:
        """
        A chunk of C{size} image bytes entered the stream at C{now}, sent
        as the last L{choose} said.

        @param holding: Whether the stream held its source back as the
            chunk came (its compressions at their limit, or the link
            congested): only then is the rate the stream's, not the
            source's.
        """
        using = self.current
        mark = self._fedMark
        if using == RAW or not holding:
            self._fedMark = None
            return
        if mark is None or mark[2] != using:
            self._fedMark = (now, 0, using)
            return
        then, total, _ = mark
        total += size
        if now - then < RATE_INTERVAL:
            self._fedMark = (then, total, using)
            return
        stats = self.codecs[using]
        stats.streamRate = _average(stats.streamRate, total / (now - then))
        self._fedMark = (now, 0, using)

    def compressed(self, encoding: int, size: int, sent: int, seconds: float) -> None:
        """
        A chunk of C{size} image bytes compressed with C{encoding} to
        C{sent} in C{seconds}.
        """
        stats = self.codecs.get(encoding)
        if stats is None or size <= 0:
            return
        stats.ratio = _average(stats.ratio, size / max(sent, 1))
        if seconds > 0:
            stats.speed = _average(stats.speed, size / seconds)
            if encoding != self.current and stats.streamRate is not None:
                # A rate measured while this codec was used is not measured
                # again until it is used again: let probes wear it off,
                # slowly (the stream's rate is the better measure).
                stats.streamRate += WEAR * (size / seconds - stats.streamRate)

    def best(self) -> tuple[int, Optional[float]]:
        """
        @return: The codec that makes the stream fastest by the model (or
            C{RAW}), and its gain over raw (None while unmeasured).
        """
        linkRate = self.linkRate
        if linkRate is None or linkRate <= 0:
            return RAW, None
        gains = {e: a / linkRate for e, a in ((e, s.achievable(linkRate)) for e, s in self.codecs.items()) if a is not None}
        if not gains:
            return RAW, None
        choice = max(gains, key=gains.__getitem__)
        kept = gains.get(self.current)
        if kept is not None and kept >= MARGIN and gains[choice] < MARGIN * kept:
            # The codec in use was measured; another is only predicted:
            # move only for a clear gain, not for the noise between them.
            choice = self.current
        gain = gains[choice]
        return (choice, gain) if gain >= MARGIN else (RAW, gain)

    def choose(self, congested: bool) -> tuple[int, Optional[int]]:
        """
        @param congested: Whether the link holds the stream back now.
        @return: What to send the next chunk with (C{RAW} or a codec), and
            a codec to try it with on the side, for the measures only (the
            chunk does not wait for that), or None.
        """
        choice, _ = self.best()
        self.current = choice
        if choice == RAW and not congested:
            return RAW, None
        # Try the codecs not in use now and then (at once, one never tried);
        # one at a time.
        due = None
        for encoding, stats in self.codecs.items():
            if encoding == choice:
                continue
            stats.sinceProbe += 1
            every = PROBE_EVERY if self._mightPay(stats) else PROBE_RARELY
            if due is None and (stats.speed is None or stats.sinceProbe >= every):
                stats.sinceProbe = 0
                due = encoding
        return choice, due

    def _mightPay(self, stats: CodecStats) -> bool:
        # Even data that shrank to nothing could not beat the link if the
        # codec is slower than it.
        return self.linkRate is None or stats.speed is None or stats.speed >= MARGIN * self.linkRate


class FixedPolicy:
    """
    C{--compress zstd} or C{lz4}: every chunk with that codec.
    """

    def __init__(self, encoding: int) -> None:
        self.encoding = encoding

    def acked(self, now: float, received: int, congested: bool) -> None:
        """
        Nothing to measure.
        """

    def delivered(self, now: float, rate: float) -> None:
        """
        Nothing to measure.
        """

    def fed(self, now: float, size: int, holding: bool) -> None:
        """
        Nothing to measure.
        """

    def compressed(self, encoding: int, size: int, sent: int, seconds: float) -> None:
        """
        Nothing to measure.
        """

    def choose(self, congested: bool) -> tuple[int, Optional[int]]:
        """
        @return: The codec, and nothing to try.
        """
        return self.encoding, None
