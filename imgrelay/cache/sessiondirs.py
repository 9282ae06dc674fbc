# -*- test-case-name: tests.cache.test_sessiondirs -*-
"""
A directory per session under the cache's sessions root, holding that
session's local sockets, so that C{criu restore --stream -D ROOT/NAME}
reads session C{NAME}.

The sockets of a session are a table of (file name, factory maker): one
more socket per session is one more row.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgrelay.core.errors import SessionError
from imgrelay.transport.localsock import DEFAULT_MODE, UnsafeDirectory, checkDirectory, localEndpoint
from imgrelay.core.slot import SessionSlot

#: Each local socket of a session: its file name in the session's
#: directory, and what makes its factory from the session's slot.
SocketTable = Sequence[tuple[str, Callable[[SessionSlot], Factory]]]


def makeSessionDirectory(path: str) -> None:
    """
    Make a session's directory, mode 0700; one left by an earlier run is
    taken if it is safe (a real directory, ours, writable by no one else).

    @raise UnsafeDirectory: If it exists and is not safe.
    @raise OSError: If it cannot be made.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise UnsafeDirectory(f"{path!r} is a symbolic link") from None
        checkDirectory(path)
    else:
        os.chmod(path, 0o700)


class SessionDirectories(Service):
    """
    Opens and closes the directories and sockets of sessions as a
    L{imgrelay.cache.registry.SessionRegistry} claims and drops them; stopping
    it closes them all.

    @ivar ports: The listening ports of each open session.
    """

    log = Logger()

    def __init__(self, root: str, sockets: SocketTable, reactor: Any, mode: int = DEFAULT_MODE) -> None:
        """
        @param root: The sessions root (checked by the caller).
        @param sockets: The sockets each session gets.
        @param reactor: Where they listen.
        @param mode: Their permission bits.
        """
        self.root = root
        self._sockets = sockets
        self._reactor = reactor
        self._mode = mode
        self.ports: dict[str, list[IListeningPort]] = {}
        self._closing: dict[str, Deferred[None]] = {}

    def path(self, name: str) -> str:
        """
        @return: The directory of session C{name}.
        """
        return os.path.join(self.root, name)

    def open(self, name: str, slot: SessionSlot) -> None:
        """
        Make session C{name}'s directory and listen on its sockets, serving
        C{slot}.

        @raise SessionError: If that cannot be done (or the service is not
            running); nothing is left behind.
        """
        if not self.running:
            raise SessionError("the cache is not running")
        path = self.path(name)
        try:
            makeSessionDirectory(path)
        except (OSError, UnsafeDirectory) as e:
            raise SessionError(f"cannot make the directory of session {name!r}: {e}") from None
        ports: list[IListeningPort] = []
        for socketName, makeFactory in self._sockets:
            result: list[Any] = []
            endpoint = serverFromString(self._reactor, localEndpoint(path, socketName, self._mode))
            endpoint.listen(makeFactory(slot)).addBoth(result.append)
            if not result or isinstance(result[0], Failure):
                # A UNIX socket is bound at once: only a failure gets here.
                why = result[0].getErrorMessage() if result else "not bound at once"
                self._close(name, path, ports)
                raise SessionError(f"cannot listen on {os.path.join(path, socketName)}: {why}")
            ports.append(result[0])
        self.ports[name] = ports
        self.log.info("session {session}: serving restores in {path}", session=name, path=path)

    def close(self, name: str, slot: object = None) -> Deferred[None]:
        """
        Stop listening on session C{name}'s sockets and remove its directory.

        @return: A Deferred that fires once done.
        """
        ports = self.ports.pop(name, None)
        if ports is None:
            return self.whenClosed(name)
        closing = self._closing[name] = self._close(name, self.path(name), ports)

        def closed(result: None) -> None:
            if self._closing.get(name) is closing:
                del self._closing[name]

        closing.addCallback(closed)
        return self.whenClosed(name)

    def whenClosed(self, name: str) -> Deferred[None]:
        """
        @return: A Deferred that fires once session C{name}'s sockets and
            directory, if being closed, are gone (at once if they are not
            being closed).
        """
        closing = self._closing.get(name)
        if closing is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        closing.addCallback(lambda result: d.callback(None))
        return d

    def _close(self, name: str, path: str, ports: list[IListeningPort]) -> Deferred[None]:
        stopped: list[Deferred[Any]] = []
        for port in ports:
            d = port.stopListening()
            if d is not None:
                stopped.append(d)

        def removeDirectory(_: object) -> None:
            try:
                os.rmdir(path)
            except OSError as e:
                if e.errno == errno.ENOTEMPTY:
                    self.log.warn(
                        "session {session}: directory {path} kept, it holds other files: {files}",
                        session=name, path=path, files=", ".join(sorted(os.listdir(path))),
                    )
                elif e.errno != errno.ENOENT:
                    self.log.error("session {session}: cannot remove {path}: {error}",
                                   session=name, path=path, error=str(e))
            else:
                self.log.info("session {session}: directory {path} removed", session=name, path=path)

        return DeferredList(stopped, consumeErrors=True).addCallback(removeDirectory)

    def stopService(self) -> Deferred[Any]:
        """
        Close every session's sockets and directory.
        """
        Service.stopService(self)
        return DeferredList([self.close(name) for name in list(self.ports)], consumeErrors=True)
