"""
Tests for L{imgrelay.proxy.compresspolicy}: the model's decisions on the
links and data the issue names.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.proxy.compresspolicy import KERNEL_WINDOW, PROBE_EVERY, PROBE_RARELY, RATE_INTERVAL, AutoPolicy, FixedPolicy
from imgrelay.wire.codecs import LZ4, RAW, ZSTD

MB = 1_000_000
MiB = 1 << 20


def _measureLink(policy: AutoPolicy, rate: float, start: float = 0.0, congested: bool = True) -> float:
    """
    The cache acknowledges at C{rate} bytes per second for 2 s.
    """
    now, received = start, 0
    for _ in range(40):
        policy.acked(now, received, congested)
        now += RATE_INTERVAL
        received += int(rate * RATE_INTERVAL)
    return now


def _feed(policy: AutoPolicy, rate: float, start: float, holding: bool = True) -> list[int]:
    """
    1 MiB chunks enter the stream at C{rate} image bytes per second for
    about 2 s, each sent as the policy chooses.

    @return: What each was sent with.
    """
    now, sent = start, []
    for _ in range(int(2 * rate / MiB)):
        sent.append(policy.choose(congested=False)[0])
        policy.fed(now, MiB, holding)
        now += MiB / rate
    return sent


def _measureCodec(policy: AutoPolicy, encoding: int, speed: float, ratio: float) -> None:
    for _ in range(40):
        policy.compressed(encoding, MiB, int(MiB / ratio), MiB / speed)


class AutoPolicyTests(SynchronousTestCase):
    """
    Compress when, and with what, it makes the migration faster.
    """

    def policy(self, linkRate: float, zstd: tuple[float, float], lz4: tuple[float, float]) -> AutoPolicy:
        policy = AutoPolicy([ZSTD, LZ4])
        _measureLink(policy, linkRate)
        _measureCodec(policy, ZSTD, *zstd)
        _measureCodec(policy, LZ4, *lz4)
        return policy

    def test_gigabitHeap(self) -> None:
        """
        A 1 Gbit link and heap memory: Zstandard (7x at 650 MB/s) beats LZ4
        (4x at 1 GB/s) by the model, and is used even once the link keeps
        up (it keeps up because of the compression).
        """
        policy = self.policy(118 * MB, (650 * MB, 7), (1000 * MB, 4))
        self.assertEqual(policy.best()[0], ZSTD)
        decisions = [policy.choose(congested=False) for _ in range(PROBE_EVERY * 2)]
        self.assertEqual({sent for sent, _ in decisions}, {ZSTD})
        self.assertEqual([tried for _, tried in decisions].count(LZ4), 2)

    def test_slowStreamPicksTheOther(self) -> None:
        """
        While Zstandard is used, the stream moves (in image bytes) slower
        than LZ4 could send: LZ4 takes over.
        """
        policy = self.policy(118 * MB, (650 * MB, 7), (1000 * MB, 4))
        self.assertEqual(policy.choose(congested=True)[0], ZSTD)
        # Compressed with zstd, 245 MB/s of image enter the stream, under
        # LZ4's 472 (118 x 4).
        _feed(policy, 245 * MB, start=100.0)
        self.assertEqual(policy.best()[0], LZ4)

    def test_keepsTheCodecInUse(self) -> None:
        """
        Zstandard in use moves the stream at 460 MB/s of image, LZ4 would
        by the model at 472 (118 x 4): within the margin, so Zstandard
        stays; at 300 MB/s, LZ4 takes over.
        """
        policy = self.policy(118 * MB, (650 * MB, 7), (1000 * MB, 4))
        self.assertEqual(policy.choose(congested=False)[0], ZSTD)
        self.assertEqual(set(_feed(policy, 460 * MB, start=100.0)), {ZSTD})
        self.assertIn(LZ4, _feed(policy, 300 * MB, start=200.0))

    def test_tenGigabit(self) -> None:
        """
        A 10 Gbit link: both codecs are slower than the link, so raw, and
        probes only rarely.
        """
        policy = self.policy(1200 * MB, (650 * MB, 7), (1000 * MB, 4))
        self.assertEqual(policy.best()[0], RAW)
        decisions = [policy.choose(congested=True) for _ in range(PROBE_RARELY * 2)]
        self.assertEqual({sent for sent, _ in decisions}, {RAW})
        self.assertIn(len([tried for _, tried in decisions if tried is not None]), (3, 4))
        self.assertEqual([policy.choose(congested=False) for _ in range(100)], [(RAW, None)] * 100)

    def test_random(self) -> None:
        """
        Random memory (ratio 1) on a slow link: raw, probing each codec one
        chunk in L{PROBE_EVERY} while the link is the bottleneck.
        """
        policy = self.policy(118 * MB, (3000 * MB, 1.0), (5000 * MB, 1.0))
        self.assertEqual(policy.best()[0], RAW)
        decisions = [policy.choose(congested=True) for _ in range(PROBE_EVERY * 4)]
        self.assertEqual({sent for sent, _ in decisions}, {RAW})
        tried = [t for _, t in decisions]
        self.assertIn(tried.count(ZSTD), (3, 4))
        self.assertIn(tried.count(LZ4), (3, 4))

    def test_unmeasured(self) -> None:
        """
        Before anything is measured: raw while the link keeps up; while it
        is the bottleneck, each codec never tried is tried at once, on the
        side.
        """
        policy = AutoPolicy([ZSTD, LZ4])
        self.assertEqual(policy.best(), (RAW, None))
        self.assertEqual(policy.choose(congested=False), (RAW, None))
        self.assertEqual(policy.choose(congested=True), (RAW, ZSTD))
        policy.compressed(ZSTD, MiB, MiB // 7, MiB / (650 * MB))
        self.assertEqual(policy.choose(congested=True), (RAW, LZ4))

    def test_firstRatioTaken(self) -> None:
        """
        A codec's first measures are taken as they are.
        """
        policy = AutoPolicy([ZSTD])
        policy.compressed(ZSTD, MiB, MiB // 7, 0.001)
        self.assertEqual(policy.codecs[ZSTD].ratio, MiB / (MiB // 7))
        self.assertEqual(policy.codecs[ZSTD].speed, MiB / 0.001)

    def test_rateOnlyWhenCongested(self) -> None:
        """
        The link's rate is measured only over stretches it was congested,
        and only while chunks go raw.
        """
        policy = AutoPolicy([ZSTD])
        policy.acked(0.0, 0, congested=False)
        policy.acked(1.0, 10 * MB, congested=False)
        self.assertIsNone(policy.linkRate)
        policy.acked(1.0, 10 * MB, congested=True)
        policy.acked(1.01, 11 * MB, congested=True)
        self.assertIsNone(policy.linkRate)
        policy.acked(1.1, 20 * MB, congested=True)
        self.assertLess(abs((policy.linkRate or 0) - 100 * MB), 1)


class FixedPolicyTests(SynchronousTestCase):
    """
    C{--compress zstd} and C{lz4}.
    """

    def test_always(self) -> None:
        policy = FixedPolicy(LZ4)
        policy.acked(0.0, 0, True)
        policy.compressed(LZ4, 1, 1, 1.0)
        self.assertEqual({policy.choose(c) for c in (True, False)}, {(LZ4, None)})


class CodecStreamRateTests(SynchronousTestCase):
    """
    A codec's stream rate is the rate at which image bytes enter the
    stream while it is used and the stream holds its source back, whether
    or not the link is congested: with compression the link keeps up, and
    what holds the stream back is the codec, the CPU or the cache.
    """

    def policy(self) -> AutoPolicy:
        policy = AutoPolicy([ZSTD, LZ4])
        _measureLink(policy, 118 * MB)
        _measureCodec(policy, ZSTD, 650 * MB, 7)
        _measureCodec(policy, LZ4, 1000 * MB, 4)
        return policy

    def test_measuredUncongested(self) -> None:
        """
        Zstandard, chosen by its speed, turns out to move the stream at
        245 MB/s of image with the link idle; LZ4 (472 MB/s by the model)
        takes over.
        """
        policy = self.policy()
        self.assertEqual(policy.choose(congested=False)[0], ZSTD)
        _feed(policy, 245 * MB, start=100.0)
        self.assertLess(abs((policy.codecs[ZSTD].streamRate or 0) - 245 * MB), MB)
        self.assertEqual(policy.choose(congested=False)[0], LZ4)

    def test_sourceBound(self) -> None:
        """
        Chunks that come while the stream does not hold its source back
        measure the source (CRIU writing slowly), not the codec: they are
        not counted.
        """
        policy = self.policy()
        self.assertEqual(policy.choose(congested=False)[0], ZSTD)
        _feed(policy, 50 * MB, start=100.0, holding=False)
        self.assertIsNone(policy.codecs[ZSTD].streamRate)
        self.assertEqual(policy.choose(congested=False)[0], ZSTD)

    def test_rawNotCounted(self) -> None:
        """
        Raw chunks measure no codec.
        """
        policy = AutoPolicy([ZSTD, LZ4])
        _feed(policy, 500 * MB, start=0.0)
        self.assertEqual([s.streamRate for s in policy.codecs.values()], [None, None])


class KernelLinkRateTests(SynchronousTestCase):
    """
    The kernel's measures of the link (L{AutoPolicy.delivered}) are its
    rate, raw or compressed, and replace the acknowledgements' once there.
    """

    def test_beforeAnyAcknowledgement(self) -> None:
        """
        A 1 Gbit link measured by the kernel from the first chunks: heap
        memory is compressed at once, without waiting for the cache's
        acknowledgements to measure the link.
        """
        policy = AutoPolicy([ZSTD, LZ4])
        _measureCodec(policy, ZSTD, 650 * MB, 7)
        _measureCodec(policy, LZ4, 1000 * MB, 4)
        policy.delivered(0.0, 119 * MB)
        self.assertEqual(policy.choose(congested=True)[0], ZSTD)

    def test_whileCompressing(self) -> None:
        """
        A link believed slow is measured again while compressed chunks go:
        at 1.19 GB/s, raw beats both codecs.
        """
        policy = AutoPolicy([ZSTD, LZ4])
        _measureCodec(policy, ZSTD, 650 * MB, 7)
        _measureCodec(policy, LZ4, 1000 * MB, 4)
        policy.delivered(0.0, 300 * MB)
        self.assertNotEqual(policy.choose(congested=True)[0], RAW)
        for i in range(1, 4):
            policy.delivered(i * 0.01, 1190 * MB)
        self.assertEqual(policy.choose(congested=True)[0], RAW)

    def test_medianInWindow(self) -> None:
        """
        The link's rate is the median of the measures of the last
        L{KERNEL_WINDOW} seconds: a burst read far above it, or a measure
        far below, does not move it; a slower link is followed once most
        measures say so.
        """
        policy = AutoPolicy([ZSTD])
        for i, rate in enumerate([119, 118, 2600, 120, 40, 119, 117]):
            policy.delivered(i * 0.01, rate * MB)
        self.assertEqual(policy.linkRate, 119 * MB)
        for i in range(10):
            policy.delivered(KERNEL_WINDOW + 0.1 + i * 0.01, 60 * MB)
        self.assertEqual(policy.linkRate, 60 * MB)

    def test_acknowledgementsIgnored(self) -> None:
        """
        Once the kernel measures the link, the acknowledgements do not.
        """
        policy = AutoPolicy([ZSTD])
        policy.delivered(0.0, 1190 * MB)
        _measureLink(policy, 100 * MB)
        self.assertLess(abs((policy.linkRate or 0) - 1190 * MB), 1)
