"""
The fault matrix, end to end: a migration through the real twistd daemons
(C{--oneshot}) while a relay between proxy and cache resets the link, holds
it silently dead, or a process is killed with SIGKILL, at a chosen point of
the link protocol (L{imgrelay.testing.faults.POINTS}).

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

from imgrelay.testing.faultrelay import POINTS
from imgrelay.testing.faults import Outcome, migrate


class FaultMatrixTests(SynchronousTestCase):
    """
    Resets, dead links and kills at every point of the link.
    """

    def migrate(self, point: str, fault: str) -> Outcome:
        """
        Run one cell; it must have struck, and ended within the bound.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-fault-")
        self.addCleanup(shutil.rmtree, base, True)
        outcome = migrate(base, point, fault)
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
        outcome = self.migrate(point, "reset")
        self.assertEqual((outcome.dumper, outcome.proxy, outcome.cache), (0, 0, 0), self.logsOf(outcome))
        self.assertTrue(outcome.restoredWhole, outcome.restoreSummary())

    test.__doc__ = f"""
        A reset of the link at {point} is resumed: the migration completes,
        byte for byte, and every process exits 0.
        """
    return test


def _blackholeCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        outcome = self.migrate(point, "blackhole")
        self.assertEqual((outcome.dumper, outcome.proxy, outcome.cache), (0, 0, 0), self.logsOf(outcome))
        self.assertTrue(outcome.restoredWhole, outcome.restoreSummary())

    test.__doc__ = f"""
        The link goes silently dead at {point}: nothing more crosses it, and
        neither end is told (a relay whose far side vanished). The proxy,
        hearing no heartbeat from the cache, drops it and resumes on a new
        link (the cache drops the old one); the migration completes, byte
        for byte, and every process exits 0.
        """
    return test


def _killProxyCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        outcome = self.migrate(point, "kill-proxy")
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
        outcome = self.migrate(point, "kill-cache")
        self.assertEqual(outcome.cache, -signal.SIGKILL)
        if point == "final-handshake":
            # The cache died with its confirmation on the way: the proxy
            # has it; the restore may have read every image, each verified
            # before the proxy's done.
            self.assertEqual((outcome.dumper, outcome.proxy), (0, 0), outcome.logs[0][-2000:])
        else:
            self.assertFailedLoudly(outcome.proxy, outcome.logs[0])
            self.assertNotEqual(outcome.dumper, 0)
            self.assertFalse(outcome.restoredWhole, outcome.restoreSummary())

    test.__doc__ = f"""
        The cache killed at {point}: the proxy gives the session up after
        its reconnect timeout and exits 1, and the dump and the restore
        fail; killed with its confirmation on the way (at the final
        handshake), the proxy has it and exits 0.
        """
    return test


def _killDumperCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        outcome = self.migrate(point, "kill-dumper")
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
for _point in POINTS:
    setattr(FaultMatrixTests, _testName("test_blackhole", _point), _blackholeCell(_point))
for _point in ("mid-chunk", "before-ack", "final-handshake"):
    setattr(FaultMatrixTests, _testName("test_killProxy", _point), _killProxyCell(_point))
for _point in ("mid-hello", "mid-chunk", "before-ack", "final-handshake"):
    setattr(FaultMatrixTests, _testName("test_killCache", _point), _killCacheCell(_point))
for _point in ("mid-chunk", "before-ack"):
    setattr(FaultMatrixTests, _testName("test_killDumper", _point), _killDumperCell(_point))
