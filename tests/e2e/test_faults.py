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

from imgrelay.testing.faults import CELLS, Outcome, migrate


class FaultMatrixTests(SynchronousTestCase):
    """
    Resets, dead links and kills at every point of the link.
    """

    def migrate(self, point: str, fault: str) -> Outcome:
        """
        Run one cell; it must have struck, and ended within the bound.

        Where a daemon is to give up (a kill), or waits a resume out (a
        link cut after the confirmation), the daemons give up after 3 s;
        where the link is only resumed, that is a bound, 30 s, which a
        loaded machine stays far from.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-fault-")
        self.addCleanup(shutil.rmtree, base, True)
        resumedOnly = not fault.startswith("kill-") and point != "after-confirmation"
        outcome = migrate(base, point, fault, giveUp=30 if resumedOnly else 3)
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


#: The points at which the dump has ended and the cache has verified every
#: image: the proxy's done has gone out.
_DUMP_OVER = ("final-handshake", "after-confirmation")


def _cell(point: str, fault: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        outcome = self.migrate(point, fault)
        dumpOver = point in _DUMP_OVER
        if fault in ("reset", "blackhole", "half-open"):
            self.assertEqual((outcome.dumper, outcome.proxy, outcome.cache), (0, 0, 0), self.logsOf(outcome))
            self.assertTrue(outcome.restoredWhole, outcome.restoreSummary())
        elif fault == "kill-proxy":
            self.assertEqual(outcome.proxy, -signal.SIGKILL)
            if dumpOver:
                # The cache had verified everything and confirmed it: only
                # the answer was lost with the proxy.
                self.assertEqual((outcome.dumper, outcome.cache), (0, 0), self.logsOf(outcome))
                self.assertTrue(outcome.restoredWhole, outcome.restoreSummary())
            else:
                self.assertNotEqual(outcome.dumper, 0)
                self.assertFailedLoudly(outcome.cache, outcome.logs[1])
                self.assertFalse(outcome.restoredWhole, outcome.restoreSummary())
        elif fault == "kill-cache":
            self.assertEqual(outcome.cache, -signal.SIGKILL)
            if dumpOver:
                # The cache died with its confirmation on the way or sent:
                # the proxy has it. The restore may have read every image.
                self.assertEqual((outcome.dumper, outcome.proxy), (0, 0), self.logsOf(outcome))
            else:
                self.assertNotEqual(outcome.dumper, 0)
                self.assertFailedLoudly(outcome.proxy, outcome.logs[0])
                self.assertFalse(outcome.restoredWhole, outcome.restoreSummary())
        else:
            if dumpOver:
                # The dump had ended (its process may still have been on
                # its way out when killed): the migration completes.
                self.assertEqual((outcome.proxy, outcome.cache), (0, 0), self.logsOf(outcome))
                self.assertTrue(outcome.restoredWhole, outcome.restoreSummary())
            else:
                self.assertEqual(outcome.dumper, -signal.SIGKILL)
                self.assertFailedLoudly(outcome.proxy, outcome.logs[0])
                self.assertFailedLoudly(outcome.cache, outcome.logs[1])
                self.assertFalse(outcome.restoredWhole, outcome.restoreSummary())

    what = {
        "reset": "a reset of the link",
        "blackhole": "the link going silently dead (nothing more crosses it, neither end is told)",
        "half-open": "the link closed on the proxy's side only (the cache's left open, never told)",
        "kill-proxy": "the proxy killed",
        "kill-cache": "the cache killed",
        "kill-dumper": "CRIU's dump killed",
    }[fault]
    test.__doc__ = f"""
        At {point}, {what}: a reset or a dead or half-open link is resumed and the
        migration completes byte for byte, every process exiting 0; a kill
        before the dump's end fails the session on each side that lives,
        loudly and with status 1, the restore getting no wrong image; a kill
        after it leaves the confirmed migration complete.
        """
    return test


for _point, _fault in CELLS:
    _name = "test_" + "".join(part.title() for part in f"{_fault}-{_point}".split("-"))
    setattr(FaultMatrixTests, _name[:5] + _name[5].lower() + _name[6:], _cell(_point, _fault))
