"""
Tests for L{imgrelay.transport.localsock}: who may reach the local sockets, and what
happens to a socket left by a dead daemon or held by a live one.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.error import CannotListenError
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imgrelay.cache.service import CacheService
from imgrelay.config import CacheConfig
from imgrelay.transport.localsock import UnsafeDirectory, checkDirectory, localEndpoint, parseMode
from imgrelay.tap import CacheOptions


class CheckDirectoryTests(SynchronousTestCase):
    """
    L{checkDirectory} refuses directories others could write to.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()

    def test_private(self) -> None:
        """
        A directory only its owner can write is accepted.
        """
        os.chmod(self.dir, 0o755)
        checkDirectory(self.dir)

    def test_writableByOthers(self) -> None:
        """
        A directory writable by its group or by others is refused, naming
        the mode and the fix.
        """
        for mode, who in [(0o777, "others"), (0o775, "its group"), (0o1777, "others")]:
            os.chmod(self.dir, mode)
            error = self.assertRaises(UnsafeDirectory, checkDirectory, self.dir)
            self.assertIn(f"writable by {who}", str(error))
            self.assertIn("chmod go-w", str(error))

    def test_otherOwner(self) -> None:
        """
        A directory owned by another user is refused.
        """
        if os.geteuid() != 0:
            raise self.skipTest("needs root to give the directory away")
        os.chown(self.dir, 12345, -1)
        error = self.assertRaises(UnsafeDirectory, checkDirectory, self.dir)
        self.assertIn("belongs to uid 12345", str(error))

    def test_missing(self) -> None:
        """
        A missing path or a file is refused.
        """
        self.assertRaises(UnsafeDirectory, checkDirectory, self.dir + "/nope")
        path = os.path.join(self.dir, "file")
        open(path, "w").close()
        self.assertRaises(UnsafeDirectory, checkDirectory, path)

    def test_daemonRefusesToStart(self) -> None:
        """
        The daemon's options refuse an unsafe images directory, and so does
        the public config.
        """
        os.chmod(self.dir, 0o777)
        error = self.assertRaises(UsageError, CacheOptions().parseOptions, ["-D", self.dir, "--listen", "tcp:0"])
        self.assertIn("--images-dir", str(error))
        self.assertRaises(UnsafeDirectory, CacheConfig, imagesDir=self.dir, listen="tcp:0")


class ModeTests(SynchronousTestCase):
    """
    The socket mode is configurable within sense.
    """

    def test_parseMode(self) -> None:
        """
        Octal modes that keep the owner's read and write are accepted;
        others are refused.
        """
        self.assertEqual(parseMode("600"), 0o600)
        self.assertEqual(parseMode("0660"), 0o660)
        for bad in ("644x", "400", "700", "1600"):
            self.assertRaises(ValueError, parseMode, bad)

    def test_endpoint(self) -> None:
        """
        The endpoint string carries the mode and a lock file, the path
        quoted.
        """
        self.assertEqual(localEndpoint("/run/a:b/", "x.sock", 0o660), "unix:/run/a\\:b/x.sock:mode=660:lockfile=1")


class StaleSocketTests(TestCase):
    """
    A socket of a dead daemon is replaced; a live daemon's is not.
    """

    def test_liveSocketKept(self) -> None:
        """
        A second cache on the same images directory cannot listen while the
        first runs, and the first's socket still answers.
        """
        d = tempfile.mkdtemp()
        first = CacheService(CacheConfig(imagesDir=d, listen="tcp:0:interface=127.0.0.1"), reactor)
        first.startService()
        self.addCleanup(first.stopService)
        second = CacheService(CacheConfig(imagesDir=d, listen="tcp:0:interface=127.0.0.1"), reactor)
        # Its link port opened first; the listeners after the one that
        # failed never started, and cannot be stopped.
        self.addCleanup(
            lambda: gatherResults([s.stopService() for s in second if getattr(s, "_waitingForPort", None) is not None])
        )
        self.assertRaises(CannotListenError, second.privilegedStartService)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(d, "streamer-serve.sock"))

    def test_staleSocketReplaced(self) -> None:
        """
        A socket file and lock left by a daemon that died are replaced.
        """
        d = tempfile.mkdtemp()
        path = os.path.join(d, "streamer-serve.sock")
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(path)
        dead.close()
        # The lock of a process that no longer exists.
        os.symlink("999999999", path + ".lock")
        cache = CacheService(CacheConfig(imagesDir=d, listen="tcp:0:interface=127.0.0.1"), reactor)
        cache.startService()
        self.addCleanup(cache.stopService)
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
