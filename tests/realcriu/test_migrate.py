"""
C{imgrelay migrate} and C{imgrelay-cache --restore} with real CRIU: the
process runs in exactly one place at the end, or is stopped at the
destination with both sides saying so, never twice and never silently
gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Optional

from imgrelay.local.proctree import state
from imgrelay.testing.daemons import Daemon, freePort
from imgrelay.testing.faultrelay import FaultRelay
from imgrelay.testing.realcriu import Restored, Victim
from imgrelay.transport.localsock import SERVE_SOCKET
from tests.realcriu.case import RealCriuCase


class _MigrateCase(RealCriuCase):
    """
    A cache that restores, and C{imgrelay migrate} of victims to it.
    """

    def setUp(self) -> None:
        super().setUp()
        self.restoreDir = self.imagesDir("restore")
        self.port = freePort()

    def cache(self, *extra: str) -> Daemon:
        cache = self.daemon(
            "imgrelay-cache", "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--images-dir", self.restoreDir,
            "--restore", "--criu", self.criu.path, "--oneshot", *extra,
        )
        cache.waitFor(path=os.path.join(self.restoreDir, SERVE_SOCKET))
        return cache

    def migrate(self, victim: Victim, *extra: str, port: Optional[int] = None) -> subprocess.Popen[bytes]:
        """
        Start C{imgrelay migrate} of C{victim} (its output in files).
        """
        out = open(self.path("migrate.out"), "wb")
        err = open(self.path("migrate.err"), "wb")
        self.addCleanup(out.close)
        self.addCleanup(err.close)
        command = [sys.executable, "-m", "imgrelay.cli.main", "migrate", "--pid", str(victim.pid),
                   "--to", f"tcp:host=127.0.0.1:port={port or self.port}", "--criu", self.criu.path, "--json",
                   "--session", os.path.basename(self.base), *extra]
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        return process

    def said(self) -> tuple[Optional[dict[str, Any]], str]:
        """
        @return: The command's JSON summary (if any) and what it said on
            stderr.
        """
        with open(self.path("migrate.out")) as f:
            out = f.read().strip()
        with open(self.path("migrate.err")) as f:
            err = f.read()
        return (json.loads(out) if out else None), err

    def assertRunsOnlyAt(self, victim: Victim, restoredPid: int, before: dict[str, Any]) -> None:
        """
        The source copy is gone, the restored one runs with its state.
        """
        victim.process.wait(30)
        self.assertFalse(victim.running())
        tree = Restored(restoredPid, victim.directory)
        self.addCleanup(tree.kill)
        report = tree.report()
        self.assertTrue(report["ok"], report)
        self.assertEqual(report.get("digest"), before.get("digest"))
        self.assertGreater(report["counter"], before["counter"])

    def assertRunsOnlyHere(self, victim: Victim, before: dict[str, Any]) -> None:
        """
        The source copy runs on, its state intact.
        """
        self.assertTrue(victim.running())
        self.assertNotEqual(state(victim.pid), "T")
        after = victim.report()
        self.assertTrue(after["ok"], after)
        self.assertEqual(after.get("digest"), before.get("digest"))
        self.assertGreater(after["counter"], before["counter"])



class MigrateTests(_MigrateCase):
    """
    The source's one command against a cache that restores.
    """

    def test_migrates(self) -> None:
        """
        The process runs at the destination only; both commands exit 0, and
        the summary gives the restored pid and the downtime.
        """
        cache = self.cache()
        victim = self.victim("memory", "--mib", "32")
        before = victim.report()
        migrate = self.migrate(victim)
        self.assertEqual(migrate.wait(120), 0, self.said()[1])
        summary, _ = self.said()
        assert summary is not None
        self.assertEqual(summary["outcome"], "migrated")
        self.assertGreater(summary["downtime"], 0)
        self.assertEqual(cache.wait(), 0, cache.log())
        self.assertIn("resumed", cache.log())
        self.assertRunsOnlyAt(victim, summary["restoredPid"], before)

    def test_restoreFails(self) -> None:
        """
        A restore that fails (a CRIU option it does not know): the source
        resumes its own process, and both exit non-zero saying why.
        """
        cache = self.cache("--restore-args", "--no-such-option")
        victim = self.victim("tree")
        before = victim.report()
        migrate = self.migrate(victim)
        self.assertEqual(migrate.wait(120), 1)
        summary, err = self.said()
        assert summary is not None
        self.assertEqual(summary["outcome"], "kept")
        self.assertIn("the destination's restore failed", err)
        self.assertIn("resumed here", err)
        self.assertEqual(cache.wait(), 1, cache.log())
        self.assertIn("restore failed", cache.log())
        self.assertRunsOnlyHere(victim, before)

    def test_cacheKilledMidTransfer(self) -> None:
        """
        The cache killed with SIGKILL in the middle of the pages: the dump
        fails, the process runs on here, migrate exits 1.
        """
        cache = self.cache()
        relay = FaultRelay(self.port, "mid-chunk", lambda: cache.process.kill())
        self.addCleanup(relay.stop)
        victim = self.victim("memory", "--mib", "64")
        before = victim.report()
        migrate = self.migrate(victim, "--reconnect-timeout", "2", port=relay.port)
        self.assertEqual(migrate.wait(120), 1, self.said()[1])
        self.assertTrue(relay.struck.is_set())
        self.assertRunsOnlyHere(victim, before)

    def test_linkCutBeforeVerdict(self) -> None:
        """
        The link is gone for good once the session is confirmed: the source
        hears no verdict and resumes its copy; the cache, whose verdict
        found no link, kills what it restored. The process runs here only.
        """
        cache = self.cache("--resume-timeout", "4")
        relay = FaultRelay(self.port, "after-confirmation", forGood=True)
        self.addCleanup(relay.stop)
        victim = self.victim("memory", "--mib", "16")
        before = victim.report()
        migrate = self.migrate(victim, "--reconnect-timeout", "2", port=relay.port)
        self.assertEqual(migrate.wait(120), 1, self.said()[1])
        # Whether the confirmation itself was lost with the link (the cut
        # resets what was in flight) or only the verdict link is refused.
        self.assertRegex(self.said()[1], "(no verdict link|no link to the cache).*resumed here")
        self.assertRunsOnlyHere(victim, before)
        self.assertEqual(cache.wait(), 1, cache.log())
        self.assertIn("killed", cache.log())

    def test_linkCutAfterVerdict(self) -> None:
        """
        The link dies after the verdict, before the commit: the source has
        killed its copy, the destination holds the process stopped; each
        says so and how to finish, and C{imgrelay resolve --resume} does.
        """
        cache = self.cache("--resume-timeout", "4")
        relay = FaultRelay(self.port, "after-verdict", forGood=True)
        self.addCleanup(relay.stop)
        victim = self.victim("tree")
        before = victim.report()
        migrate = self.migrate(victim, "--reconnect-timeout", "2", port=relay.port)
        self.assertEqual(migrate.wait(120), 3, self.said()[1])
        summary, err = self.said()
        self.assertIsNone(summary)
        self.assertIn("the destination holds it STOPPED as pid", err)
        restoredPid = int(err.split("imgrelay resolve --resume ")[1].split()[0])
        self.assertEqual(cache.wait(), 1, cache.log())
        self.assertIn(f"imgrelay resolve --resume {restoredPid}", cache.log())
        victim.process.wait(30)
        self.assertFalse(victim.running())
        self.assertEqual(state(restoredPid), "T")
        resolved = subprocess.run([sys.executable, "-m", "imgrelay.cli.main", "resolve", "--resume", str(restoredPid)],
                                  capture_output=True, text=True)
        self.assertEqual(resolved.returncode, 0, resolved.stderr)
        self.assertRunsOnlyAt(victim, restoredPid, before)


class SessionsRootMigrateTests(_MigrateCase):
    """
    A cache with C{--sessions-root} restores each migration in its own
    directory, and serves on.
    """

    def cache(self, *extra: str) -> Daemon:
        self.root = self.imagesDir("sessions")
        cache = self.daemon(
            "imgrelay-cache", "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--sessions-root", self.root,
            "--restore", "--criu", self.criu.path, *extra,
        )
        cache.waitFor(port=self.port)
        return cache

    def test_migrates(self) -> None:
        """
        Two processes, one after the other, through one cache: each runs at
        the destination only; the cache goes on, and keeps no directory.
        """
        cache = self.cache()
        for kind in ("memory", "tree"):
            victim = self.victim(kind, *(("--mib", "16") if kind == "memory" else ()))
            before = victim.report()
            migrate = self.migrate(victim)
            self.assertEqual(migrate.wait(120), 0, self.said()[1])
            summary, _ = self.said()
            assert summary is not None
            self.assertRunsOnlyAt(victim, summary["restoredPid"], before)
            self.assertIsNone(cache.process.poll(), cache.log())
        self.assertEqual(os.listdir(self.root), [])
