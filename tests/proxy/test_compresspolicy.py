"""
Tests for L{imgrelay.proxy.compresspolicy}: the model's decisions on the
links and data the issue names.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.proxy.compresspolicy import MARGIN, PROBE_EVERY, RATE_INTERVAL, AutoPolicy

MB = 1_000_000
MiB = 1 << 20


def _policy(linkRate: float, speed: float, ratio: float) -> AutoPolicy:
    """
    A policy that measured a link of C{linkRate} bytes per second and a
    compressor of C{speed} that shrinks C{ratio} times.
    """
    policy = AutoPolicy()
    now, received = 0.0, 0
    for _ in range(40):
        policy.acked(now, received, congested=True)
        now += RATE_INTERVAL
        received += int(linkRate * RATE_INTERVAL)
    for _ in range(40):
        policy.compressed(MiB, int(MiB / ratio), MiB / speed)
    return policy


class AutoPolicyTests(SynchronousTestCase):
    """
    Compress when it makes the migration faster, by the measures.
    """

    def test_gigabitHeap(self) -> None:
        """
        A 1 Gbit link and heap memory (7x at 650 MB/s): compress, even
        once the link keeps up (it keeps up because of the compression).
        """
        policy = _policy(118 * MB, 650 * MB, 7)
        gain = policy.gain()
        assert gain is not None
        self.assertLess(abs(gain - 650 / 118), 0.2)
        self.assertTrue(policy.compress(congested=True))
        self.assertTrue(policy.compress(congested=False))

    def test_tenGigabit(self) -> None:
        """
        A 10 Gbit link (1.2 GB/s): raw, the compressor is slower than the
        link; a chunk in L{PROBE_EVERY} is compressed while congested.
        """
        policy = _policy(1200 * MB, 650 * MB, 7)
        decisions = [policy.compress(congested=True) for _ in range(PROBE_EVERY * 3)]
        self.assertEqual(sum(decisions), 3)
        self.assertEqual([policy.compress(congested=False) for _ in range(100)], [False] * 100)

    def test_random(self) -> None:
        """
        Random memory (ratio 1) on a slow link: raw.
        """
        policy = _policy(118 * MB, 3000 * MB, 1.0)
        gain = policy.gain()
        assert gain is not None
        self.assertLess(gain, MARGIN)
        self.assertFalse(policy.compress(congested=False))

    def test_unmeasured(self) -> None:
        """
        Before anything is measured: raw while the link keeps up; the
        first chunk while it is the bottleneck is a probe.
        """
        policy = AutoPolicy()
        self.assertIsNone(policy.gain())
        self.assertFalse(policy.compress(congested=False))
        self.assertTrue(policy.compress(congested=True))

    def test_rateOnlyWhenCongested(self) -> None:
        """
        The link's rate is measured only over stretches it was congested,
        and only while chunks go raw.
        """
        policy = AutoPolicy()
        policy.acked(0.0, 0, congested=False)
        policy.acked(1.0, 10 * MB, congested=False)
        self.assertIsNone(policy.linkRate)
        policy.acked(1.0, 10 * MB, congested=True)
        policy.acked(1.01, 11 * MB, congested=True)
        self.assertIsNone(policy.linkRate)
        policy.acked(1.1, 20 * MB, congested=True)
        self.assertLess(abs((policy.linkRate or 0) - 100 * MB), 1)

    def test_packedRateBounds(self) -> None:
        """
        While compressing, a congested link whose stream moves slower (in
        image bytes) than the raw link did turns compression off; probes
        let it back on once the compressor proves fast again.
        """
        policy = _policy(118 * MB, 650 * MB, 7)
        self.assertTrue(policy.compress(congested=True))
        # Compressed, the cache takes 10 MB/s of wire bytes: 70 MB/s of
        # image bytes, under the raw link's 118.
        now, received = 100.0, 0
        for _ in range(40):
            policy.acked(now, received, congested=True)
            now += RATE_INTERVAL
            received += int(10 * MB * RATE_INTERVAL)
        self.assertFalse(policy.compress(congested=True))
        for _ in range(40):
            policy.compressed(MiB, MiB // 7, MiB / (650 * MB))
        self.assertTrue(policy.compress(congested=True))
