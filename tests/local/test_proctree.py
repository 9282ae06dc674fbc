"""
Tests for L{imgrelay.local.proctree}, on real processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.local.proctree import killTree, residentBytes, resumeTree, signalTree, state, treeOf

#: A parent that starts two children and waits.
_PARENT = (
    "import os, subprocess, sys, time\n"
    "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(2)]\n"
    "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
    "time.sleep(60)\n"
)


class TreeTests(SynchronousTestCase):
    """
    A parent with two children.
    """

    def setUp(self) -> None:
        self.parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
        assert self.parent.stdout is not None
        self.children = [int(p) for p in self.parent.stdout.readline().split()]
        self.addCleanup(self.parent.wait)
        self.addCleanup(lambda: killTree(self.parent.pid))

    def _until(self, pids: list[int], letters: str) -> None:
        deadline = time.monotonic() + 10
        while not all((state(p) or "-") in letters for p in pids):
            self.assertLess(time.monotonic(), deadline, [state(p) for p in pids])
            time.sleep(0.005)

    def test_tree(self) -> None:
        """
        The root first, then its children.
        """
        tree = treeOf(self.parent.pid)
        self.assertEqual(tree[0], self.parent.pid)
        self.assertEqual(sorted(tree[1:]), sorted(self.children))

    def test_stopAndResume(self) -> None:
        """
        Every process of the tree stops, and resumes.
        """
        everyone = [self.parent.pid, *self.children]
        self.assertEqual(sorted(signalTree(self.parent.pid, signal.SIGSTOP)), sorted(everyone))
        self._until(everyone, "T")
        resumeTree(self.parent.pid)
        self._until(everyone, "SR")

    def test_kill(self) -> None:
        """
        Every process of the tree dies.
        """
        killTree(self.parent.pid)
        self.assertEqual(self.parent.wait(10), -signal.SIGKILL)
        # Gone, or zombies of whoever adopted them.
        self._until(self.children, "Z-")

    def test_none(self) -> None:
        """
        No such process: an empty tree, nothing signalled.
        """
        self.parent.kill()
        self.parent.wait()
        self.assertEqual(treeOf(self.parent.pid), [])
        self.assertEqual(resumeTree(self.parent.pid), [])
        self.assertIsNone(state(self.parent.pid))
        self.assertRaises(OSError, residentBytes, self.parent.pid)

    def test_residentBytes(self) -> None:
        """
        A live process's resident memory, as its status says in kB.
        """
        with open(f"/proc/{self.parent.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        self.assertGreater(kb, 0)
        # The same to within a MiB (the parent only sleeps meanwhile).
        self.assertLess(abs(residentBytes(self.parent.pid) // 1024 - kb), 1024)
