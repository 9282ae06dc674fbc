"""
The base of the real-CRIU tests: skip with the reason where CRIU cannot
run, a fresh directory, and a check after each test that it left no
process and no mount behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from imgrelay.testing import realcriu
from imgrelay.testing.daemons import Daemon
from imgrelay.testing.realcriu import CriuRun, Restored, Victim


class RealCriuCase(SynchronousTestCase):
    """
    A test that runs real CRIU on victims.

    @ivar base: The test's directory; every process it starts names it on
        its command line, which is how L{assertNothingLeft} finds them.
    @ivar criu: The CRIU to run, its logs in C{base}.
    """

    def setUp(self) -> None:
        reason = realcriu.unavailable()
        if reason is not None:
            raise SkipTest(f"real CRIU cannot run here: {reason}")
        realcriu.becomeSubreaper()
        self.base = tempfile.mkdtemp(prefix="imgrelay-criu-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.addCleanup(self.assertNothingLeft, realcriu.mounts(self.base))
        self.criu = realcriu.Criu(self.base)
        self._victims = 0

    def assertNothingLeft(self, mounts: set[str]) -> None:
        """
        No process of the test runs any more (any that does is killed, and
        the test fails), and the mounts are those it began with.
        """
        left = realcriu.leftovers(self.base)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.assertEqual(left, [], "processes left behind")
        self.assertEqual(realcriu.mounts(self.base) ^ mounts, set(), "mounts changed")

    def path(self, *parts: str) -> str:
        """
        @return: A path under the test's directory.
        """
        return os.path.join(self.base, *parts)

    def imagesDir(self, name: str) -> str:
        """
        @return: A new directory for images or a daemon's sockets, mode
            0700 as the daemons want it.
        """
        path = self.path(name)
        os.mkdir(path, 0o700)
        return path

    def victim(self, kind: str, *args: str) -> Victim:
        """
        Start a victim; it is killed at the end of the test.
        """
        self._victims += 1
        victim = Victim(kind, self.path(f"victim-{self._victims}-{kind}"), *args)
        self.addCleanup(victim.stop)
        return victim

    def criuRun(self, run: CriuRun) -> CriuRun:
        """
        Have C{run} killed at the end of the test if it still runs.
        """
        self.addCleanup(run.stop)
        return run

    def daemon(self, plugin: str, *args: str) -> Daemon:
        """
        Start C{twistd imgrelay-...}; it is stopped at the end of the test.
        """
        daemon = Daemon(plugin, list(args), self.path(f"{plugin}-{len(os.listdir(self.base))}.log"))
        self.addCleanup(daemon.stop)
        return daemon

    def assertDumped(self, dump: CriuRun, victim: Victim) -> None:
        """
        The dump succeeded, and (without C{--leave-running}) the source copy
        is gone.
        """
        self.assertEqual(dump.wait(), 0, dump.errors())
        victim.process.wait(30)
        self.assertFalse(victim.running())

    def assertRestored(
        self, restore: CriuRun, victim: Victim, before: dict[str, Any], timeout: float = 120
    ) -> tuple[Restored, dict[str, Any]]:
        """
        The restore succeeded, and the restored tree reports its state
        intact, its counter on from where the source copy had it before
        the dump, and still advancing.

        @param before: The source copy's report before the dump.
        @return: The restored tree (killed at the end of the test) and its
            first report.
        """
        self.assertEqual(restore.wait(timeout), 0, restore.errors())
        tree = restore.restored(victim.directory)
        self.addCleanup(tree.kill)
        self.assertNotEqual(tree.pid, victim.pid)
        report = tree.report()
        self.assertTrue(report["ok"], report)
        self.assertEqual(report["kind"], before["kind"])
        self.assertGreater(report["counter"], before["counter"])
        for key in ("digest", "children", "objects", "bytes"):
            self.assertEqual(report.get(key), before.get(key), key)
        again = tree.report()
        self.assertTrue(again["ok"], again)
        self.assertGreater(again["counter"], report["counter"])
        return tree, report
