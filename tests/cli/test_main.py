"""
Tests for L{imgrelay.cli.main}: the command's arguments and exit statuses, and
the command itself run as a subprocess (C{python -m imgrelay.cli.main}) against
a cache in this process and against C{twistd imgrelay-cache}, on 127.0.0.1
and a UNIX socket.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imgrelay.config import CacheConfig
from imgrelay.transport.localsock import FETCH_SOCKET
from imgrelay.cli import main as _cli
from imgrelay.cache.service import CacheService
from imgrelay.core.store import Session, SessionState
from imgrelay.testing import traces
from imgrelay.testing.daemons import Daemon, freePort


class MainTests(SynchronousTestCase):
    """
    L{_cli.main} parses its arguments and turns failures into one line.
    """

    def main(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stderr", stderr)  # argparse writes usage errors there
        status = _cli.main(list(argv), stdout, stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def test_usage(self) -> None:
        """
        A missing command or argument is a usage error: status 2.
        """
        self.assertEqual(self.main()[0], 2)
        self.assertEqual(self.main("fetch", "out")[0], 2)
        self.assertEqual(self.main("send", "dir")[0], 2)
        self.assertEqual(self.main("frobnicate")[0], 2)

    def test_compressModes(self) -> None:
        """
        C{send} and C{migrate} take the proxy's C{--compress} modes, and
        only those.
        """
        from imgrelay.proxy.packer import MODES

        self.assertEqual(_cli.COMPRESS_MODES, MODES)
        to = ["--to", "tcp:host=h:port=1"]
        for command, rest in (("send", ["dir", *to]), ("migrate", ["--pid", "1", *to])):
            status, _, err = self.main(command, *rest, "--compress", "gzip")
            self.assertEqual(status, 2)
            self.assertIn("invalid choice: 'gzip'", err)

    def test_migrateHalfTLS(self) -> None:
        """
        C{migrate} with some of the TLS options is a usage error, said
        before anything runs.
        """
        status, _, err = self.main("migrate", "--pid", "1", "--to", "tcp:host=h:port=1", "--tls-cert", "c.pem")
        self.assertEqual((status, err), (2, "imgrelay migrate: TLS needs all of --tls-cert, --tls-key and --tls-ca\n"))

    def test_fetchUnreachable(self) -> None:
        """
        A fetch from a socket that is not there exits 1 with one line.
        """
        missing = os.path.abspath(self.mktemp())
        status, out, err = self.main("fetch", "--from", missing, os.path.abspath(self.mktemp()))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"imgrelay fetch: cannot connect to {missing}: No such file or directory\n")

    def test_sendHalfTLS(self) -> None:
        """
        TLS options given in part are refused before anything is sent.
        """
        status, _, err = self.main("send", ".", "--to", "tcp:host=127.0.0.1:port=1", "--tls-cert", "c.pem")
        self.assertEqual((status, err), (1, "imgrelay send: TLS needs all of --tls-cert, --tls-key and --tls-ca\n"))


class SubprocessTests(TestCase):
    """
    C{python -m imgrelay.cli.main} sends a directory to a cache in this process
    and fetches it back.
    """

    timeout = 120

    async def cacheAndSource(self, images: dict[str, bytes]) -> tuple[str, str, str, str, CacheService]:
        """
        A directory holding C{images}, and a cache in this process.

        @return: The restore directory, the source directory, a path for a
            fetch, the cache's link endpoint, and the cache.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-cli-")
        self.addCleanup(shutil.rmtree, base, True)
        restore, source, out = (os.path.join(base, d) for d in ("restore", "source", "out"))
        os.mkdir(restore, 0o700)
        os.mkdir(source)
        for name, content in images.items():
            with open(os.path.join(source, name), "wb") as f:
                f.write(content)
        cache = CacheService(CacheConfig(listen="tcp:0:interface=127.0.0.1", imagesDir=restore), reactor)
        cache.startService()
        self.addCleanup(cache.stopService)
        address: Any = await cache.linkAddress()
        return restore, source, out, f"tcp:host=127.0.0.1:port={address.port}", cache

    def cli(self, *args: str) -> Any:
        """
        Run C{imgrelay ARGS} in a subprocess.
        """
        return getProcessOutputAndValue(sys.executable, ["-m", "imgrelay.cli.main", *args], env=dict(os.environ))

    async def test_sendThenFetch(self) -> None:
        """
        C{imgrelay send} exits 0 once the cache confirmed the session, and
        C{imgrelay fetch --from DIR} writes the same files back, byte for
        byte, saying what it fetched; progress goes to stderr as plain
        lines. Sending the same session again exits 1 with the cache's
        reason on one line.
        """
        images = traces.traceImages()
        restore, source, out, to, cache = await self.cacheAndSource(images)
        released: Deferred[Session] = Deferred()
        cache.addSessionObserver(released.callback)
        cli = self.cli

        stdout, stderr, status = await cli("send", source, "--to", to, "--session", "cli")
        self.assertEqual(status, 0, stderr)
        total = sum(map(len, images.values()))
        self.assertIn(f"sent session cli: {len(images)} images", stdout.decode())
        self.assertIn(b"send: 100%", stderr)

        stdout, stderr, status = await cli("send", source, "--to", to, "--session", "cli")
        self.assertEqual(status, 1)
        self.assertEqual(
            stderr.decode().splitlines()[-1],
            "imgrelay send: cache refused the session: session 'cli' is already complete",
        )

        stdout, stderr, status = await cli("fetch", "--from", restore, out)
        self.assertEqual(status, 0, stderr)
        self.assertEqual(stdout.decode(), f"fetched session cli: {len(images)} images, "
                         f"{_cli.humanBytes(total)} ({total} bytes) into {out}\n")
        for name, content in images.items():
            with open(os.path.join(out, name), "rb") as f:
                self.assertEqual(f.read(), content, name)
        # The fetch was the session's reader: once it left, the cache let
        # the session go.
        session = await released
        self.assertEqual((session.name, session.state), ("cli", SessionState.COMPLETE))


    async def test_sendCompressed(self) -> None:
        """
        C{imgrelay send --compress zstd} says how much smaller the images
        went on the link, and the fetch gives them back byte for byte.
        """
        images = {"pages-1.img": b"".join(b"{'item': %d, 'name': 'n%d'}" % (i % 300, i % 7) for i in range(200_000)),
                  "core-1.img": os.urandom(3000)}
        restore, source, out, to, cache = await self.cacheAndSource(images)
        cli = self.cli

        stdout, stderr, status = await cli("send", source, "--to", to, "--session", "z", "--compress", "zstd")
        self.assertEqual(status, 0, stderr)
        self.assertRegex(stdout.decode(), r"on the link \([0-9.]+x smaller\)")
        stdout, stderr, status = await cli("fetch", "--from", restore, out)
        self.assertEqual(status, 0, stderr)
        for name, content in images.items():
            with open(os.path.join(out, name), "rb") as f:
                self.assertTrue(f.read() == content, name)

    async def test_sendInterrupted(self) -> None:
        """
        C{imgrelay send} interrupted (SIGINT) while the cache has not
        answered exits 130 with one line saying the session was not
        confirmed.
        """
        connected: Deferred[None] = Deferred()

        class Silent(Protocol):
            def connectionMade(self) -> None:
                connected.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        source = tempfile.mkdtemp(prefix="imgrelay-cli-")
        ended: Deferred[tuple[bytes, Failure]] = Deferred()

        class Watch(ProcessProtocol):
            err = b""

            def errReceived(self, data: bytes) -> None:
                self.err += data

            def processEnded(self, reason: Failure) -> None:
                ended.callback((self.err, reason))

        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            Watch(), sys.executable,
            [sys.executable, "-m", "imgrelay.cli.main", "send", source, "--to", f"tcp:host=127.0.0.1:port={port.getHost().port}"],
            env=dict(os.environ),
        )
        await connected
        process.signalProcess("INT")
        err, reason = await ended
        self.assertEqual(reason.value.exitCode, 130)
        # (A signal before the reactor runs is a KeyboardInterrupt: the
        # same status, a shorter line.)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertTrue(err.startswith(b"imgrelay send: interrupted"), err)


class DaemonTests(SynchronousTestCase):
    """
    The command against C{twistd imgrelay-cache}, both as subprocesses.
    """

    def test_oneshotCache(self) -> None:
        """
        A directory sent to C{twistd imgrelay-cache --oneshot} and fetched
        from the fetch socket in its images directory comes back byte for
        byte, and the fetch, as the session's reader, ends the cache with
        status 0.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-cli-e2e-")
        restore, source, out = (os.path.join(base, d) for d in ("restore", "source", "out"))
        os.mkdir(restore, 0o700)
        os.mkdir(source)
        images = {"inventory.img": os.urandom(86), "pages-1.img": traces.patternBytes("p", 3 << 20), "empty.img": b""}
        for name, content in images.items():
            with open(os.path.join(source, name), "wb") as f:
                f.write(content)
        port = freePort()
        cache = Daemon("imgrelay-cache", ["--listen", f"tcp:{port}:interface=127.0.0.1", "--images-dir", restore,
                                          "--oneshot"], os.path.join(base, "cache.log"))
        self.addCleanup(cache.stop)
        cache.waitFor(path=os.path.join(restore, FETCH_SOCKET))

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "imgrelay.cli.main", *args], capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL)

        sent = cli("send", source, "--to", f"tcp:host=127.0.0.1:port={port}")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        fetched = cli("fetch", "--from", restore, out)
        self.assertEqual(fetched.returncode, 0, fetched.stderr)
        for name, content in images.items():
            with open(os.path.join(out, name), "rb") as f:
                self.assertEqual(f.read(), content, name)
        self.assertEqual(cache.wait(), 0, cache.log())
