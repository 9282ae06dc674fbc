# -*- test-case-name: tests.scenarios.test_stream,tests.test_tap -*-
"""
imgrelay-cache as a service: accept links from proxies into memory, and
serve CRIU's restore from a local socket.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger

from imgrelay.core.observers import Observers
from imgrelay.cache.criulink import CriuLinkReceiverFactory
from imgrelay.cache.interfaces import ILinkListener
from imgrelay.cache.feeds import observeCache
from imgrelay.cache.fetchserve import FetchServeFactory
from imgrelay.cache.listener import CacheLinkFactory
from imgrelay.cache.memory import MemoryBound
from imgrelay.cache.registry import SessionRegistry
from imgrelay.cache.remote import CacheRemoteBackend
from imgrelay.cache.sessiondirs import SessionDirectories, SocketTable
from imgrelay.cache.verdicts import RestoreJobs
from imgrelay.core.limits import Limits
from imgrelay.core.store import Session
from imgrelay.core.slot import SessionSlot
from imgrelay.observe.service import listeningAddress
from imgrelay.local.remote import RemoteFactory
from imgrelay.local.streamserve import StreamServeFactory
from imgrelay.transport.localsock import FETCH_SOCKET, REMOTE_CACHE_SOCKET, SERVE_SOCKET, localEndpoint
from imgrelay.transport.tls import serverService
from imgrelay.transport.workers import Workers
from imgrelay.wire.codecs import decode

if TYPE_CHECKING:
    # Only a name for the type checker: the config sits above the services.
    from imgrelay.config import CacheConfig


def localSockets(protocol: str, reactor: Any, idleTimeout: Optional[float], limits: Limits) -> SocketTable:
    """
    The local sockets a restore finds in its images directory, each with
    what serves it from a slot: CRIU's first, then C{imgrelay fetch}'s.

    @param protocol: CRIU's local protocol, C{"stream"} or C{"remote"}.
    @param reactor: The reactor.
    @param idleTimeout: How long a new connection may take to open its
        exchange: a link's hello (or the cache's answer to it), and with
        C{"remote"} a local connection's header and pipe.
    @param limits: Local connections at once, per socket.
    """
    fetch = (FETCH_SOCKET, lambda slot: FetchServeFactory(slot, reactor, limits))
    if protocol == "remote":
        return [
            (REMOTE_CACHE_SOCKET, lambda slot: RemoteFactory(CacheRemoteBackend(slot), reactor, limits, idleTimeout)),
            fetch,
        ]
    return [
        (SERVE_SOCKET, lambda slot: StreamServeFactory(slot, reactor, limits)),
        fetch,
    ]


class CacheService(MultiService):
    """
    The cache: links in on the config's C{listen}; restores on CRIU's
    socket, or, with a sessions root, on the sockets in each session's own
    directory.

    @ivar config: What it was told.
    @ivar slot: The session being received and served (with one images
        directory), or None.
    @ivar registry: The sessions by name (with a sessions root), or None.
    @ivar directories: Their directories and sockets (with a sessions
        root), or None.
    @ivar observer: Its statistics (C{observer.stats}), progress lines,
        status fd and HTTP status.
    """

    log = Logger()

    def __init__(self, config: CacheConfig, reactor: Any = None, clock: Optional[IReactorTime] = None) -> None:
        """
        @param config: The cache's options, checked already.
        @param reactor: The reactor; the global one by default.
        @param clock: Where the retention time is counted; the reactor by
            default.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        MultiService.__init__(self)
        self.config = config
        self.bound = MemoryBound(config.maxMemory)
        self._observers: Observers[Session] = Observers()
        sockets = localSockets(config.protocol, reactor, config.idleTimeout, config.limits)
        self.slot: Optional[SessionSlot] = None
        self.registry: Optional[SessionRegistry] = None
        self.directories: Optional[SessionDirectories] = None
        timer = reactor if clock is None else clock
        claims: Any
        if config.sessionsRoot is not None:
            self.directories = directories = SessionDirectories(
                config.sessionsRoot, sockets, reactor, config.socketMode
            )
            directories.setServiceParent(self)
            self.registry = claims = SessionRegistry(
                directories.open, directories.close, self._consumed, reactor.seconds, config.retain, timer,
                config.maxSessions,
            )
        else:
            self.slot = claims = SessionSlot(self._consumed, reactor.seconds, config.retain, timer)
        self._linkFactory: ILinkListener
        if config.link == "criu":
            self._linkFactory = CriuLinkReceiverFactory(claims, config.verbose)
        else:
            # The link only calls claim(name) (ISessionClaims) on what it is given.
            self.workers = Workers(reactor, "imgrelay-cache-decode")
            self.workers.setServiceParent(self)
            self.restores = self._restoreJobs(config, reactor)
            self._linkFactory = CacheLinkFactory(
                claims, reactor.seconds, reactor, config.verbose, config.limits, config.resumeTimeout, self.bound,
                config.idleTimeout, config.heartbeat, lambda *job: self.workers.run(decode, *job),
                self.restores,
            )
        if config.tls is None:
            self._link = strports.service(config.listen, self._linkFactory, reactor=reactor)
        else:
            self._link = serverService(reactor, config.listen, self._linkFactory, config.tls)
        self._link.setServiceParent(self)
        listening = {"link": self._link}
        local = config.localDescription()
        if self.slot is not None and local is not None:
            (_, makeFactory), *others = sockets
            localService = strports.service(local, makeFactory(self.slot), reactor=reactor)
            localService.setServiceParent(self)
            listening["local"] = localService
            socketsDir = config.socketsDir
            for name, makeFactory in others:
                if socketsDir is not None:
                    # Beside CRIU's, in the images directory.
                    endpoint = localEndpoint(socketsDir, name, config.socketMode)
                    strports.service(endpoint, makeFactory(self.slot), reactor=reactor).setServiceParent(self)
        self.observer = observeCache(
            claims, config.observability, reactor, listening, lambda: sum(s.bytes for s in self.sessions)
        )
        self.observer.setServiceParent(self)

    #: With C{--restore}: the restores it runs, for its sessions from
    #: C{imgrelay migrate}.
    restores: Optional[RestoreJobs] = None

    @staticmethod
    def _restoreJobs(config: CacheConfig, reactor: Any) -> Optional[RestoreJobs]:
        if not config.restore:
            return None
        assert config.criu is not None
        root, imagesDir = config.sessionsRoot, config.imagesDir
        return RestoreJobs(
            reactor, config.criu, config.restoreArgs,
            lambda name: os.path.join(root, name) if root is not None else imagesDir or "",
            reactor.seconds, config.resumeTimeout,
        )

    @property
    def sessions(self) -> list[Session]:
        """
        @return: The sessions this cache holds now: its slot's, or every
            named session's.
        """
        if self.registry is not None:
            return self.registry.sessions
        assert self.slot is not None
        return [self.slot.current]

    def linkAddress(self) -> Deferred[IAddress]:
        """
        The address the link listens on, once it does: useful with port 0.
        Call after L{startService}.

        @return: A Deferred firing with the listening port's address.
        """
        return listeningAddress(self._link)

    def stopService(self) -> Any:
        """
        Stop listening and close every link; sessions still receiving fail,
        and none is kept for its retention time any more.
        """
        self._linkFactory.abortAll()
        if self.restores is not None:
            self.restores.stop()
        if self.slot is not None:
            self.slot.stop()
        if self.registry is not None:
            self.registry.stop()
        return MultiService.stopService(self)

    def whenLinksClosed(self) -> Deferred[None]:
        """
        @return: A Deferred that fires once no link is open and no session
            waits for its proxy to resume it, so that the final answer of a
            completed session has reached its proxy, or the proxy had the
            resume timeout to come back for it.
        """
        return self._linkFactory.whenIdle()

    def addSessionObserver(self, observer: Callable[[Session], None]) -> None:
        """
        Call C{observer} with each session once it is over: complete and
        restored, or failed and no restore is reading it.
        """
        self._observers.add(observer)

    def _consumed(self, session: Session) -> None:
        self.bound.free(session)
        self.log.info(
            "session {session} released ({state})", session=session.name, state=session.state.value
        )
        self._observers.tell(session)

