"""
Tests for L{imgrelay.local.criurun}.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.local.criurun import ExitStatus, logTail


class ExitStatusTests(SynchronousTestCase):
    """
    The exit status, whichever way the process ended.
    """

    def test_statuses(self) -> None:
        for reason, status in (
            (ProcessDone(0), 0), (ProcessTerminated(exitCode=3), 3), (ProcessTerminated(signal=9), -9),
        ):
            protocol = ExitStatus()
            protocol.processEnded(Failure(reason))
            self.assertEqual(self.successResultOf(protocol.ended), status)


class LogTailTests(SynchronousTestCase):
    """
    What a CRIU log says went wrong.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="imgrelay-criurun-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "log")

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def test_logTail(self) -> None:
        """
        The errors and warnings of a log, or its last lines, or why none.
        """
        self.write("a\nb\n(1) Error (x): bad\nc\n")
        self.assertEqual(logTail(self.path), "(1) Error (x): bad")
        self.write("a\nb\n")
        self.assertEqual(logTail(self.path), "a\nb")
        self.assertIn("no log", logTail(os.path.join(self.dir, "nothing")))

    def test_levelsAndLines(self) -> None:
        """
        Only the levels asked for, at most C{lines} of them.
        """
        self.write("(1) Warn (x): w\n(2) Error (x): e1\n(3) Error (x): e2\n")
        self.assertEqual(logTail(self.path), "(1) Warn (x): w\n(2) Error (x): e1\n(3) Error (x): e2")
        self.assertEqual(logTail(self.path, 1, ("Error",)), "(3) Error (x): e2")
