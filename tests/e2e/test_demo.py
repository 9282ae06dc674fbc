"""
Tests for L{imgrelay.testing.demo}: the README's first command, run as a
user runs it.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import TestCase


class DemoTests(TestCase):
    """
    C{python -m imgrelay.testing.demo} migrates the bundled dump through
    the real daemons and says so.
    """

    def test_demo(self) -> None:
        """
        The demo exits 0, both daemons exited 0, and every byte was
        verified.
        """
        done = subprocess.run(
            [sys.executable, "-m", "imgrelay.testing.demo"], capture_output=True, text=True, timeout=120
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("proxy exit status 0, cache exit status 0", done.stdout)
        self.assertIn("every byte verified: OK", done.stdout)
