"""
The victims and the harness, with plain image directories: each kind of
victim survives a real C{criu dump -D} and C{criu restore -D}, and says so
only when its state is intact.
"""

from __future__ import annotations

import os

from twisted.trial.reporter import TestResult

from imgrelay.testing import realcriu
from tests.realcriu.case import RealCriuCase


class VictimTests(RealCriuCase):
    """
    Each victim, dumped to a directory and restored from it.
    """

    def roundTrip(self, kind: str, *args: str) -> None:
        victim = self.victim(kind, *args)
        before = victim.report()
        self.assertTrue(before["ok"], before)
        images = self.imagesDir("images")
        self.assertDumped(self.criuRun(self.criu.dump(victim.pid, images)), victim)
        self.assertRestored(self.criuRun(self.criu.restore(images)), victim, before)

    def test_memory(self) -> None:
        """
        Random memory and a counter.
        """
        self.roundTrip("memory", "--mib", "32")

    def test_tree(self) -> None:
        """
        A parent, a child on pipes, a child on a socketpair, a file at a
        position.
        """
        self.roundTrip("tree")

    def test_heap(self) -> None:
        """
        A heap of small Python objects.
        """
        self.roundTrip("heap", "--objects", "200000")

    def test_alteredImageDetected(self) -> None:
        """
        The victim's check can fail: a restore from pages altered in one
        byte restores a process whose report says so. Without that, a
        passing report would prove nothing.
        """
        victim = self.victim("memory", "--mib", "32")
        before = victim.report()
        images = self.imagesDir("images")
        self.assertDumped(self.criuRun(self.criu.dump(victim.pid, images)), victim)
        pages = max((n for n in os.listdir(images) if n.startswith("pages-")),
                    key=lambda n: os.path.getsize(os.path.join(images, n)))
        with open(os.path.join(images, pages), "r+b") as f:
            # Somewhere inside the 32 MiB of random bytes, which fill most
            # of the largest pages image.
            f.seek(os.path.getsize(f.name) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        restore = self.criuRun(self.criu.restore(images))
        self.assertEqual(restore.wait(), 0, restore.errors())
        tree = restore.restored(victim.directory)
        self.addCleanup(tree.kill)
        report = tree.report()
        self.assertFalse(report["ok"], report)
        self.assertNotEqual(report["digest"], before["digest"])


class CleanupTests(RealCriuCase):
    """
    A failing test leaves nothing behind.
    """

    def test_failingTestCleansUp(self) -> None:
        """
        The victim, its C{unshare}, the daemon of a test that failed are
        gone once it ended, and so is its directory.
        """
        class FailsMidway(RealCriuCase):
            def test_fails(self) -> None:
                victim = self.victim("memory", "--mib", "8")
                self.pids = [victim.pid, victim.process.pid]
                cache = self.daemon(
                    "imgrelay-cache", "--listen", "tcp:0:interface=127.0.0.1", "--images-dir", self.imagesDir("r"),
                )
                self.pids.append(cache.process.pid)
                self.fail("on purpose")

        case = FailsMidway("test_fails")
        result = TestResult()
        case.run(result)
        self.assertEqual(len(result.failures), 1, result.errors)
        self.assertEqual(result.errors, [])
        self.assertEqual(len(case.pids), 3)
        for pid in case.pids:
            self.assertFalse(realcriu.alive(pid), pid)
        self.assertEqual(realcriu.leftovers(case.base), [])
        self.assertFalse(os.path.exists(case.base))
