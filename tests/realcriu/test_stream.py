"""
Real migrations with C{--stream}: C{criu dump --stream} into
C{twistd imgrelay-proxy}, over TCP (or TLS, or a link that breaks) to
C{twistd imgrelay-cache}, out to C{criu restore --stream}, each restore
started before its dump, each victim checking its own state once restored.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from imgrelay.testing.daemons import Daemon, freePort, unixListening
from imgrelay.testing.faultrelay import FaultRelay
from imgrelay.testing.realcriu import CriuRun, Victim
from imgrelay.transport.localsock import CAPTURE_SOCKET, SERVE_SOCKET
from tests.realcriu.case import RealCriuCase


class StreamMigrationTests(RealCriuCase):
    """
    One victim at a time through the two daemons.
    """

    def setUp(self) -> None:
        super().setUp()
        self.dumpDir = self.imagesDir("dump")
        self.restoreDir = self.imagesDir("restore")
        self.port = freePort()

    def cache(self, *extra: str) -> Daemon:
        cache = self.daemon(
            "imgrelay-cache", "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--images-dir", self.restoreDir,
            "--oneshot", *extra,
        )
        cache.waitFor(path=os.path.join(self.restoreDir, SERVE_SOCKET))
        return cache

    def proxy(self, *extra: str, port: Optional[int] = None) -> Daemon:
        proxy = self.daemon(
            "imgrelay-proxy", "--connect", f"tcp:host=127.0.0.1:port={port or self.port}",
            "--images-dir", self.dumpDir, "--oneshot", *extra,
        )
        proxy.waitFor(path=os.path.join(self.dumpDir, CAPTURE_SOCKET))
        return proxy

    def dumpAndRestore(self, victim: Victim, restoreFirst: bool = True) -> tuple[dict[str, Any], CriuRun, CriuRun]:
        """
        Start the restore, then the dump, of C{victim}.

        @param restoreFirst: Start the restore before the dump (it waits for
            the images); else once the dump returned.
        @return: The victim's report before the dump, the dump, the restore.
        """
        before = victim.report()
        self.assertTrue(before["ok"], before)
        restore = None
        if restoreFirst:
            restore = self.criuRun(self.criu.restore(self.restoreDir, "--stream"))
        dump = self.criuRun(self.criu.dump(victim.pid, self.dumpDir, "--stream"))
        if restore is None:
            dump.wait()
            restore = self.criuRun(self.criu.restore(self.restoreDir, "--stream"))
        return before, dump, restore

    def migrate(self, victim: Victim, proxy: Daemon, cache: Daemon, restoreFirst: bool = True) -> None:
        """
        Migrate C{victim}: it runs restored, both oneshot daemons exit 0.
        """
        before, dump, restore = self.dumpAndRestore(victim, restoreFirst)
        self.assertDumped(dump, victim)
        self.assertRestored(restore, victim, before)
        self.assertEqual(proxy.wait(), 0, proxy.log())
        self.assertEqual(cache.wait(20), 0, cache.log())

    def test_memory(self) -> None:
        """
        64 MiB of random memory and a counter.
        """
        cache = self.cache()
        proxy = self.proxy()
        self.migrate(self.victim("memory", "--mib", "64"), proxy, cache)
        self.assertIn("complete, cache confirmed", proxy.log())

    def test_tree(self) -> None:
        """
        A process tree joined by pipes and a socketpair, with a file open
        at a position; the restore starts once the dump is over.
        """
        cache = self.cache()
        proxy = self.proxy()
        self.migrate(self.victim("tree"), proxy, cache, restoreFirst=False)

    def test_heap(self) -> None:
        """
        A Python heap of small objects.
        """
        cache = self.cache()
        proxy = self.proxy()
        self.migrate(self.victim("heap", "--objects", "300000"), proxy, cache)

    def test_mutualTLS(self) -> None:
        """
        Over TLS, each daemon proving itself with a certificate of the
        test's CA.
        """
        from tests.transport.test_tls import Authority

        ca = Authority(self.path(), "test")
        cacheFiles = ca.issue("cache", ["127.0.0.1"])
        proxyFiles = ca.issue("proxy", ["proxy.example"])

        def tls(files: Any) -> list[str]:
            return ["--tls-cert", files.cert, "--tls-key", files.key, "--tls-ca", files.ca]

        cache = self.cache(*tls(cacheFiles))
        proxy = self.proxy(*tls(proxyFiles))
        self.migrate(self.victim("memory", "--mib", "32"), proxy, cache)
        self.assertIn("TLS", proxy.log() + cache.log())

    def test_resetMidTransfer(self) -> None:
        """
        The link is reset in the middle of the pages: the proxy dials
        again, the session resumes, and the victim runs restored.
        """
        cache = self.cache()
        relay = FaultRelay(self.port, "mid-chunk")
        self.addCleanup(relay.stop)
        proxy = self.proxy(port=relay.port)
        self.migrate(self.victim("memory", "--mib", "64"), proxy, cache)
        self.assertTrue(relay.struck.is_set())
        self.assertIn("resum", proxy.log())

    def test_linkDiesForGood(self) -> None:
        """
        The link goes down in the middle of the pages and stays down: the
        proxy gives up, which makes C{criu dump} fail, and CRIU leaves the
        victim running, its state intact; the cache fails the session
        loudly, and the restore fails.
        """
        cache = self.cache("--resume-timeout", "2")
        relay = FaultRelay(self.port, "mid-chunk", forGood=True)
        self.addCleanup(relay.stop)
        proxy = self.proxy("--reconnect-timeout", "2", port=relay.port)
        victim = self.victim("memory", "--mib", "64")
        before, dump, restore = self.dumpAndRestore(victim)
        self.assertNotEqual(dump.wait(), 0, "criu dump succeeded over a dead link")
        self.assertTrue(victim.running())
        after = victim.report()
        self.assertTrue(after["ok"], after)
        self.assertEqual(after["digest"], before["digest"])
        self.assertGreater(after["counter"], before["counter"])
        self.assertNotEqual(restore.wait(), 0, "criu restore succeeded without a session")
        self.assertEqual(proxy.wait(), 1, proxy.log())
        self.assertEqual(cache.wait(), 1, cache.log())
        self.assertIn("failed", cache.log())


class SessionsRootTests(RealCriuCase):
    """
    One cache with C{--sessions-root}, two migrations one after another.
    """

    def test_twoMigrations(self) -> None:
        """
        Two victims migrate through one cache, each in the session its
        proxy names; the cache serves on, and removes each session's
        directory once restored.
        """
        root = self.imagesDir("sessions")
        port = freePort()
        cache = self.daemon("imgrelay-cache", "--listen", f"tcp:{port}:interface=127.0.0.1", "--sessions-root", root)
        cache.waitFor(port=port)
        for name, kind, args in (("web-1", "memory", ("--mib", "32")), ("web-2", "tree", ())):
            dumpDir = self.imagesDir(f"dump-{name}")
            proxy = self.daemon(
                "imgrelay-proxy", "--connect", f"tcp:host=127.0.0.1:port={port}", "--images-dir", dumpDir,
                "--session", name, "--oneshot",
            )
            proxy.waitFor(path=os.path.join(dumpDir, CAPTURE_SOCKET))
            victim = self.victim(kind, *args)
            before = victim.report()
            dump = self.criuRun(self.criu.dump(victim.pid, dumpDir, "--stream"))
            sessionDir = os.path.join(root, name)
            serve = os.path.join(sessionDir, SERVE_SOCKET)
            deadline = time.monotonic() + 60
            while not unixListening(serve):
                self.assertFalse(dump.process.poll(), dump.errors())
                self.assertLess(time.monotonic(), deadline, f"{serve} never listened:\n{cache.log()}")
                time.sleep(0.005)
            # CRIU writes its stats-restore into its work directory, by
            # default the images directory: elsewhere, so that the cache
            # can remove the session's directory.
            work = self.imagesDir(f"work-{name}")
            restore = self.criuRun(self.criu.restore(sessionDir, "--stream", "-W", work))
            self.assertDumped(dump, victim)
            self.assertRestored(restore, victim, before)
            self.assertEqual(proxy.wait(), 0, proxy.log())
            self.assertIsNone(cache.process.poll(), cache.log())
            deadline = time.monotonic() + 30
            while os.path.exists(sessionDir) and time.monotonic() < deadline:
                time.sleep(0.005)
            self.assertFalse(os.path.exists(sessionDir), cache.log())
        self.assertIn("web-1", cache.log())
        self.assertIn("web-2", cache.log())
