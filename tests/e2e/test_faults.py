"""
The fault matrix, end to end: a migration through the real twistd daemons
(C{--oneshot}) while a relay between proxy and cache resets the link, or a
process is killed with SIGKILL, at a chosen point of the link protocol
(L{imgrelay.testing.faults.POINTS}).

Every cell ends within a bounded time, with the right exit status on each
side: 0 where the migration completed (a reset is resumed), non-zero with
the reason in the log otherwise. The restore gets the whole verified image
set, byte for byte, or a clear failure (images answered as absent, or its
socket closed): never a partial image from a cache that is alive.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from typing import Callable, Optional

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.testing.faults import POINTS, Outcome, migrate


class FaultMatrixTests(SynchronousTestCase):
    """
    Resets and kills at every point of the link.
    """

    def migrate(self, point: str, victim: Optional[str]) -> Outcome:
        """
        Run one cell; it must have struck, and ended within the bound.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-fault-")
        self.addCleanup(shutil.rmtree, base, True)
        outcome = migrate(base, point, victim)
        self.assertTrue(outcome.struck, f"the link never reached {point}")
        self.assertFalse(outcome.hung, self.logsOf(outcome))
        self.assertFalse(outcome.wrongBytes)
        return outcome

    def logsOf(self, outcome: Outcome) -> str:
        """
        @return: The ends of both daemons' logs, for a failure message.
        """
        proxy, cache = outcome.logs
        return f"proxy:\n{proxy[-1500:]}\ncache:\n{cache[-1500:]}"

    def assertFailedLoudly(self, status: Optional[int], log: str) -> None:
        """
        A daemon that lived on exited 1, saying why.
        """
        self.assertEqual(status, 1, log[-2000:])
        self.assertIn("failed", log)


def _resetCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        outcome = self.migrate(point, None)
        self.assertEqual((outcome.dumper, outcome.proxy, outcome.cache), (0, 0, 0), self.logsOf(outcome))
        self.assertTrue(outcome.restoredWhole, outcome.restoreSummary())

    test.__doc__ = f"""
        A reset of the link at {point} is resumed: the migration completes,
        byte for byte, and every process exits 0.
        """
    return test


def _killProxyCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        outcome = self.migrate(point, "proxy")
        self.assertEqual(outcome.proxy, -signal.SIGKILL)
        if point == "final-handshake":
            # The dump had ended, and the cache had verified everything and
            # confirmed it: only the answer was lost with the proxy.
            self.assertEqual(outcome.dumper, 0)
            self.assertEqual(outcome.cache, 0, self.logsOf(outcome))
            self.assertTrue(outcome.restoredWhole, outcome.restoreSummary())
        else:
            self.assertNotEqual(outcome.dumper, 0)
            self.assertFailedLoudly(outcome.cache, outcome.logs[1])
            self.assertFalse(outcome.restoredWhole, outcome.restoreSummary())

    test.__doc__ = f"""
        The proxy killed at {point}: the dump fails; the cache gives the
        session up after its resume timeout and exits 1, and the restore
        gets no partial image (at the final handshake the dump had ended
        and the cache had confirmed every image: it serves them all and
        exits 0).
        """
    return test


def _killCacheCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        outcome = self.migrate(point, "cache")
        self.assertEqual(outcome.cache, -signal.SIGKILL)
        self.assertFailedLoudly(outcome.proxy, outcome.logs[0])
        if point == "final-handshake":
            # The dump had ended, and the restore may have read every
            # image, each verified before the proxy's done: the proxy,
            # never confirmed, still fails.
            self.assertEqual(outcome.dumper, 0)
        else:
            self.assertNotEqual(outcome.dumper, 0)
            self.assertFalse(outcome.restoredWhole, outcome.restoreSummary())

    test.__doc__ = f"""
        The cache killed at {point}: the proxy gives the session up after
        its reconnect timeout and exits 1; before the final handshake the
        dump and the restore fail too.
        """
    return test


def _killDumperCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        outcome = self.migrate(point, "dumper")
        self.assertEqual(outcome.dumper, -signal.SIGKILL)
        self.assertFailedLoudly(outcome.proxy, outcome.logs[0])
        self.assertFailedLoudly(outcome.cache, outcome.logs[1])
        self.assertFalse(outcome.restoredWhole, outcome.restoreSummary())

    test.__doc__ = f"""
        CRIU's dump killed at {point}: the dump stream ends without its
        inventory, both daemons give the session up and exit 1, and the
        restore gets no partial image.
        """
    return test


def _testName(prefix: str, point: str) -> str:
    return prefix + "".join(part.title() for part in point.split("-"))


for _point in POINTS:
    setattr(FaultMatrixTests, _testName("test_reset", _point), _resetCell(_point))
for _point in ("mid-chunk", "before-ack", "final-handshake"):
    setattr(FaultMatrixTests, _testName("test_killProxy", _point), _killProxyCell(_point))
for _point in ("mid-hello", "mid-chunk", "before-ack", "final-handshake"):
    setattr(FaultMatrixTests, _testName("test_killCache", _point), _killCacheCell(_point))
for _point in ("mid-chunk", "before-ack"):
    setattr(FaultMatrixTests, _testName("test_killDumper", _point), _killDumperCell(_point))
