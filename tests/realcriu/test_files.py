"""
A plain image directory: C{criu dump -D}, C{imgrelay send} to a cache,
C{imgrelay fetch} out of it, C{criu restore -D}.
"""

from __future__ import annotations

import os
import subprocess
import sys

from imgrelay.testing.daemons import freePort
from imgrelay.transport.localsock import SERVE_SOCKET
from tests.realcriu.case import RealCriuCase


class SendFetchTests(RealCriuCase):
    """
    Image files moved by the command, not by CRIU's streaming.
    """

    def imgrelay(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """
        Run C{imgrelay ARGS} (as C{python -m imgrelay.cli.main}).
        """
        return subprocess.run(
            [sys.executable, "-m", "imgrelay.cli.main", *args], capture_output=True, timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def test_sendAndFetch(self) -> None:
        """
        A process tree dumped to a directory, sent as one session, fetched
        into another directory, restored from it: it runs on, its state
        intact, and every file fetched is the file dumped.
        """
        victim = self.victim("tree")
        before = victim.report()
        dumped = self.imagesDir("dumped")
        self.assertDumped(self.criuRun(self.criu.dump(victim.pid, dumped)), victim)
        port = freePort()
        restoreDir = self.imagesDir("restore")
        cache = self.daemon(
            "imgrelay-cache", "--listen", f"tcp:{port}:interface=127.0.0.1", "--images-dir", restoreDir, "--oneshot",
        )
        cache.waitFor(path=os.path.join(restoreDir, SERVE_SOCKET))
        sent = self.imgrelay("send", dumped, "--to", f"tcp:host=127.0.0.1:port={port}", "--session", "files")
        self.assertEqual(sent.returncode, 0, sent.stderr.decode())
        fetched = self.path("fetched")
        got = self.imgrelay("fetch", "--from", restoreDir, fetched)
        self.assertEqual(got.returncode, 0, got.stderr.decode())
        self.assertEqual(cache.wait(), 0, cache.log())
        self.assertEqual(sorted(os.listdir(fetched)), sorted(os.listdir(dumped)))
        for name in os.listdir(dumped):
            with open(os.path.join(dumped, name), "rb") as a, open(os.path.join(fetched, name), "rb") as b:
                self.assertTrue(a.read() == b.read(), name)
        self.assertRestored(self.criuRun(self.criu.restore(fetched)), victim, before)
