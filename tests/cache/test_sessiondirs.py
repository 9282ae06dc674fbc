"""
Tests for L{imgrelay.cache.sessiondirs}: each session's directory under the
sessions root and its local sockets (listened on a L{MemoryReactor}; the
directories are real, in a temporary root).
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver, MemoryReactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.core.errors import SessionError
from imgrelay.cache.sessiondirs import SessionDirectories, makeSessionDirectory
from imgrelay.core.slot import SessionSlot


class _Refusing(MemoryReactor):
    """
    A reactor on which listening on one path fails as if another daemon
    held it.
    """

    def __init__(self, refused: str) -> None:
        MemoryReactor.__init__(self)
        self.refused = refused

    def listenUNIX(self, address: str, *args: Any, **kwargs: Any) -> Any:
        if address.endswith(self.refused):
            raise CannotListenError(None, address, OSError("Cannot acquire lock"))
        return MemoryReactor.listenUNIX(self, address, *args, **kwargs)


class SessionDirectoriesTests(SynchronousTestCase):
    """
    Tests for L{SessionDirectories}.
    """

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp()
        self.reactor = MemoryReactor()
        self.made: list[tuple[str, SessionSlot]] = []

    def table(self, *names: str) -> list[tuple[str, Any]]:
        def maker(socketName: str) -> Any:
            def make(slot: SessionSlot) -> Factory:
                self.made.append((socketName, slot))
                return Factory()

            return make

        return [(name, maker(name)) for name in names]

    def test_open(self) -> None:
        """
        Opening a session makes its directory, mode 0700, and listens on
        each socket of the table in it, with the socket mode and a lock
        file, each factory made from the session's slot.
        """
        dirs = SessionDirectories(self.root, self.table("serve.sock", "fetch.sock"), self.reactor, 0o660)
        dirs.startService()
        slot = SessionSlot()
        dirs.open("web-1", slot)
        path = os.path.join(self.root, "web-1")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)
        self.assertEqual(
            [(address, mode, wantPID) for (address, _, _, mode, wantPID) in self.reactor.unixServers],
            [(os.path.join(path, "serve.sock"), 0o660, True), (os.path.join(path, "fetch.sock"), 0o660, True)],
        )
        self.assertEqual(self.made, [("serve.sock", slot), ("fetch.sock", slot)])
        self.assertEqual(len(dirs.ports["web-1"]), 2)

    def test_close(self) -> None:
        """
        Closing a session stops its sockets and removes its directory.
        """
        dirs = SessionDirectories(self.root, self.table("serve.sock"), self.reactor)
        dirs.startService()
        dirs.open("web-1", SessionSlot())
        self.successResultOf(dirs.close("web-1"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "web-1")))
        self.assertEqual(dirs.ports, {})
        # Closing again, or a name never opened, does nothing.
        self.successResultOf(dirs.close("web-1"))
        self.successResultOf(dirs.close("other"))

    def test_otherFilesKept(self) -> None:
        """
        A directory holding other files (CRIU's restore log) is kept, with a
        warning naming them.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        dirs = SessionDirectories(self.root, self.table("serve.sock"), self.reactor)
        dirs.startService()
        dirs.open("web-1", SessionSlot())
        path = os.path.join(self.root, "web-1")
        with open(os.path.join(path, "restore.log"), "w") as f:
            f.write("log")
        self.successResultOf(dirs.close("web-1"))
        self.assertEqual(os.listdir(path), ["restore.log"])
        self.assertTrue(any("restore.log" in formatEvent(e) for e in events))

    def test_notRunning(self) -> None:
        """
        A session arriving while the service is not running (the cache is
        stopping) is refused, and nothing is made.
        """
        dirs = SessionDirectories(self.root, self.table("serve.sock"), self.reactor)
        dirs.startService()
        self.successResultOf(dirs.stopService())
        error = self.assertRaises(SessionError, dirs.open, "late", SessionSlot())
        self.assertIn("not running", str(error))
        self.assertEqual(os.listdir(self.root), [])

    def test_stopService(self) -> None:
        """
        Stopping the service closes every session.
        """
        dirs = SessionDirectories(self.root, self.table("serve.sock"), self.reactor)
        dirs.startService()
        dirs.open("a", SessionSlot())
        dirs.open("b", SessionSlot())
        self.successResultOf(dirs.stopService())
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(dirs.ports, {})

    def test_listenFails(self) -> None:
        """
        If a socket cannot be listened on, opening fails with a
        L{SessionError} naming it, and the sockets already listening and the
        directory are removed.
        """
        reactor = _Refusing("fetch.sock")
        dirs = SessionDirectories(self.root, self.table("serve.sock", "fetch.sock"), reactor)
        dirs.startService()
        error = self.assertRaises(SessionError, dirs.open, "web-1", SessionSlot())
        self.assertIn("fetch.sock", str(error))
        self.assertIn("Cannot acquire lock", str(error))
        self.assertEqual(os.listdir(self.root), [])
        self.assertEqual(dirs.ports, {})

    def test_existingSafeDirectory(self) -> None:
        """
        A directory left by an earlier run is taken if it is private.
        """
        os.mkdir(os.path.join(self.root, "web-1"), 0o700)
        dirs = SessionDirectories(self.root, self.table("serve.sock"), self.reactor)
        dirs.startService()
        dirs.open("web-1", SessionSlot())
        self.assertEqual(len(self.reactor.unixServers), 1)

    def test_existingUnsafeDirectory(self) -> None:
        """
        An existing directory others can write to, or a symbolic link, is
        refused and left alone.
        """
        dirs = SessionDirectories(self.root, self.table("serve.sock"), self.reactor)
        dirs.startService()
        open_ = os.path.join(self.root, "open")
        os.mkdir(open_)
        os.chmod(open_, 0o777)
        error = self.assertRaises(SessionError, dirs.open, "open", SessionSlot())
        self.assertIn("writable by others", str(error))
        elsewhere = tempfile.mkdtemp()
        os.symlink(elsewhere, os.path.join(self.root, "link"))
        error = self.assertRaises(SessionError, dirs.open, "link", SessionSlot())
        self.assertIn("symbolic link", str(error))
        self.assertEqual(self.reactor.unixServers, [])
        self.assertTrue(os.path.isdir(open_))

    def test_modeDespiteUmask(self) -> None:
        """
        A new directory is 0700 whatever the umask (even one that would take
        the owner's write access).
        """
        old = os.umask(0o277)
        try:
            path = os.path.join(self.root, "d")
            makeSessionDirectory(path)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)
