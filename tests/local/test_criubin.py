"""
Tests for L{imgrelay.local.criubin}.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.local.criubin import CriuNotFound, findCriu


class FindCriuTests(SynchronousTestCase):
    """
    C{IMGRELAY_CRIU} first, then C{PATH}, else a reason.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="imgrelay-criubin-")
        self.addCleanup(shutil.rmtree, self.dir)

    def program(self, name: str, mode: int = 0o755) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(path, mode)
        return path

    def test_environment(self) -> None:
        """
        C{IMGRELAY_CRIU} wins over C{PATH}.
        """
        mine = self.program("my-criu")
        self.program("criu")
        self.assertEqual(findCriu({"IMGRELAY_CRIU": mine, "PATH": self.dir}), mine)

    def test_environmentNotExecutable(self) -> None:
        """
        A C{IMGRELAY_CRIU} that names no executable file is an error that
        names it, not a fall back to C{PATH}.
        """
        plain = self.program("not-criu", 0o644)
        self.program("criu")
        for named in (plain, os.path.join(self.dir, "missing")):
            with self.assertRaises(CriuNotFound) as raised:
                findCriu({"IMGRELAY_CRIU": named, "PATH": self.dir})
            self.assertIn(named, str(raised.exception))

    def test_path(self) -> None:
        """
        Without C{IMGRELAY_CRIU}, C{criu} on C{PATH}.
        """
        criu = self.program("criu")
        self.assertEqual(findCriu({"PATH": self.dir}), criu)
        self.assertEqual(findCriu({"IMGRELAY_CRIU": "", "PATH": self.dir}), criu)

    def test_nowhere(self) -> None:
        """
        Neither: the reason says where it looked.
        """
        with self.assertRaises(CriuNotFound) as raised:
            findCriu({"PATH": self.dir})
        self.assertIn("IMGRELAY_CRIU", str(raised.exception))
