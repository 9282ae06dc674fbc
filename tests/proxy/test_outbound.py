"""
Tests for L{imgrelay.proxy.outbound}: the proxy's unacknowledged session stream.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.proxy.outbound import BadOffset, OutboundLog


def joined(pieces: object) -> bytes:
    """
    @return: C{pieces} put together.
    """
    return b"".join(bytes(p) for p in pieces)  # type: ignore[attr-defined]


class OutboundLogTests(SynchronousTestCase):
    """
    Tests for L{OutboundLog}.
    """

    def setUp(self) -> None:
        self.log = OutboundLog()
        self.log.append([b"abc", b"", memoryview(b"defgh")])
        self.log.append([b"ij"])

    def test_counts(self) -> None:
        """
        Appending counts every byte; nothing is acknowledged yet.
        """
        self.assertEqual((self.log.appended, self.log.acked, self.log.held), (10, 0, 10))

    def test_sinceEveryOffset(self) -> None:
        """
        From any offset, inside a piece or between two, the log gives
        exactly the rest of the stream.
        """
        for offset in range(11):
            self.assertEqual(joined(self.log.since(offset)), b"abcdefghij"[offset:])

    def test_ackForgets(self) -> None:
        """
        Acknowledging drops whole pieces before the offset and keeps a
        piece it falls inside; the rest is still there to send.
        """
        self.log.ack(4)
        self.assertEqual(self.log.held, 6)
        self.assertEqual(joined(self.log.since(4)), b"efghij")
        self.assertEqual(len(self.log._pieces), 2)
        self.log.ack(10)
        self.assertEqual(len(self.log._pieces), 0)
        self.assertEqual(self.log.since(10), [])

    def test_badOffsets(self) -> None:
        """
        An offset past what was sent, or before what was acknowledged, is
        refused.
        """
        self.assertRaises(BadOffset, self.log.ack, 11)
        self.assertRaises(BadOffset, self.log.since, 11)
        self.log.ack(5)
        self.assertRaises(BadOffset, self.log.ack, 4)
        self.assertRaises(BadOffset, self.log.since, 4)
        self.assertEqual(self.log.acked, 5)
