# -*- test-case-name: tests.scenarios.test_stream,tests.test_tap -*-
"""
imgrelay-cache as a service: accept links from proxies into memory, and
serve CRIU's restore from a local socket.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime
from twisted.logger import Logger

from imgrelay.cache.link import CacheLinkFactory
from imgrelay.cache.resume import DEFAULT_RESUME_TIMEOUT
from imgrelay.local.criulink import CriuLinkReceiverFactory
from imgrelay.observe.feeds import observeCache
from imgrelay.cache.fetchserve import FetchServeFactory
from imgrelay.wire.fetch import FETCH_SOCKET
from imgrelay.core.limits import Limits
from imgrelay.cache.memory import MemoryBound
from imgrelay.transport.localsock import DEFAULT_MODE, checkDirectory, localEndpoint
from imgrelay.observe.service import Observability
from imgrelay.proxy.service import LINKS, PROTOCOLS
from imgrelay.cache.registry import DEFAULT_MAX_SESSIONS, SessionRegistry
from imgrelay.local.remote import DEFAULT_IDLE_TIMEOUT, RemoteFactory
from imgrelay.local.remotesides import CacheRemoteBackend
from imgrelay.cache.sessiondirs import SessionDirectories, SocketTable
from imgrelay.core.store import Session, SessionSlot
from imgrelay.local.streamserve import StreamServeFactory
from imgrelay.transport.tls import TLSFiles, serverService

#: The socket C{criu restore --stream -D DIR} connects to, inside DIR.
SERVE_SOCKET = "streamer-serve.sock"

#: The socket C{criu restore --remote} connects to, in its images directory.
REMOTE_CACHE_SOCKET = "img-cache.sock"


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

    def limited(factory: Any) -> Factory:
        factory.connectionLimit = limits.maxLocalConnections
        factory.limits = limits
        return factory

    fetch = (FETCH_SOCKET, lambda slot: limited(FetchServeFactory(slot, reactor)))
    if protocol == "remote":
        return [
            (REMOTE_CACHE_SOCKET, lambda slot: limited(RemoteFactory(CacheRemoteBackend(slot), reactor, idleTimeout))),
            fetch,
        ]
    return [
        (SERVE_SOCKET, lambda slot: limited(StreamServeFactory(slot, reactor))),
        fetch,
    ]


class CacheService(MultiService):
    """
    The cache: links in on C{listen}; restores on C{local}, or, with a
    sessions root, on the sockets in each session's own directory.

    @ivar slot: The session being received and served (with one images
        directory), or None.
    @ivar registry: The sessions by name (with a sessions root), or None.
    @ivar directories: Their directories and sockets (with a sessions
        root), or None.
    @ivar observer: Its statistics (C{observer.stats}), progress lines,
        status fd and HTTP status.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, listen: str, local: Optional[str], verbose: bool = False, protocol: str = "stream",
        idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT, tls: Optional[TLSFiles] = None,
        link: str = "imgrelay",
        limits: Limits = Limits(),
        resumeTimeout: float = DEFAULT_RESUME_TIMEOUT,
        sessionsRoot: Optional[str] = None,
        retain: float = 0.0,
        maxSessions: int = DEFAULT_MAX_SESSIONS,
        socketMode: int = DEFAULT_MODE,
        imagesDir: Optional[str] = None,
        clock: Optional[IReactorTime] = None,
        observability: Observability = Observability(),
        maxMemory: Optional[int] = None,
    ) -> None:
        """
        @param reactor: The reactor.
        @param listen: Server endpoint string for the link.
        @param local: Server endpoint string for CRIU's socket.
        @param verbose: Log every image, not only large ones.
        @param protocol: CRIU's local protocol, C{"stream"} or C{"remote"}.
        @param idleTimeout: How long a new connection may take to open its
            exchange: a link's hello (or the cache's answer to it), and with
            C{"remote"} a local connection's header and pipe.
        @param tls: Certificate, key and CA for a mutually authenticated TLS
            link: only proxies certified by that CA get in. None for plain
            TCP.
        @param link: C{"imgrelay"}, or C{"criu"} to accept a CRIU
            image-proxy's format (nothing can be verified).
        @param limits: Images and bytes per session, local connections.
        @param resumeTimeout: Seconds a session whose link broke waits for
            its proxy to resume it before it fails.
        @param sessionsRoot: Serve each session in its own directory under
            this one, named as its proxy named it; C{local} is then None.
        @param retain: Seconds a session is kept after its last restore
            ended (or, failed, once no restore reads it).
        @param maxSessions: With C{sessionsRoot}, how many sessions may be
            received at once.
        @param socketMode: The permission bits of the sockets this service
            makes in a directory.
        @param imagesDir: The single images directory, where the sockets
            other than CRIU's (on C{local}) go; None for none of them.
        @param clock: Where the retention time is counted; the reactor by
            default.
        @param observability: Progress lines, stats file, status fd, HTTP.
        @param maxMemory: The most image bytes held at once, or None: at
            the bound, links are not read until memory is freed.
        @raise ValueError: For an unknown protocol or unreadable TLS files,
            or a sessions root with C{local} or the C{"criu"} link.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        if link not in LINKS:
            raise ValueError(f"unknown link format {link!r}")
        if sessionsRoot is not None and local is not None:
            raise ValueError("a sessions root has a socket per session: no other local endpoint")
        if sessionsRoot is not None and link == "criu":
            raise ValueError("a CRIU-format link names no session: it cannot use a sessions root")
        if sessionsRoot is None and local is None:
            raise ValueError("give a local endpoint or a sessions root")
        MultiService.__init__(self)
        self.bound = MemoryBound(maxMemory)
        self._observers: list[Callable[[Session], None]] = []
        sockets = localSockets(protocol, reactor, idleTimeout, limits)
        self.slot: Optional[SessionSlot] = None
        self.registry: Optional[SessionRegistry] = None
        self.directories: Optional[SessionDirectories] = None
        timer = reactor if clock is None else clock
        claims: Any
        if sessionsRoot is not None:
            self.directories = directories = SessionDirectories(sessionsRoot, sockets, reactor, socketMode)
            directories.setServiceParent(self)
            self.registry = claims = SessionRegistry(
                directories.open, directories.close, self._consumed, reactor.seconds, retain, timer, maxSessions,
            )
        else:
            self.slot = claims = SessionSlot(self._consumed, reactor.seconds, retain, timer)
        self._linkFactory: "CacheLinkFactory | CriuLinkReceiverFactory"
        if link == "criu":
            self._linkFactory = CriuLinkReceiverFactory(claims, verbose)
        else:
            # The link only calls claim(name) (ISessionClaims) on what it is given.
            self._linkFactory = CacheLinkFactory(
                claims, reactor.seconds, reactor, verbose, limits, resumeTimeout, self.bound, idleTimeout
            )
        if tls is None:
            self._link = strports.service(listen, self._linkFactory, reactor=reactor)
        else:
            self._link = serverService(reactor, listen, self._linkFactory, tls)
        self._link.setServiceParent(self)
        listening = {"link": self._link}
        if self.slot is not None and local is not None:
            (_, makeFactory), *others = sockets
            localService = strports.service(local, makeFactory(self.slot), reactor=reactor)
            localService.setServiceParent(self)
            listening["local"] = localService
            for name, makeFactory in others:
                if imagesDir is not None:
                    # Beside CRIU's, in the images directory.
                    endpoint = localEndpoint(imagesDir, name, socketMode)
                    strports.service(endpoint, makeFactory(self.slot), reactor=reactor).setServiceParent(self)
        self.observer = observeCache(
            claims, observability, reactor, listening, lambda: sum(s.bytes for s in self.sessions)
        )
        self.observer.setServiceParent(self)

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
        waiting = self._link._waitingForPort  # set by startService
        if waiting is None:
            raise RuntimeError("the cache service is not started")
        d: Deferred[IAddress] = Deferred()

        def listening(port: IListeningPort) -> IListeningPort:
            d.callback(port.getHost())
            return port

        waiting.addCallback(listening)
        return d

    def stopService(self) -> Any:
        """
        Stop listening and close every link; sessions still receiving fail,
        and none is kept for its retention time any more.
        """
        self._linkFactory.abortAll()
        if self.slot is not None:
            self.slot.stop()
        if self.registry is not None:
            self.registry.stop()
        return MultiService.stopService(self)

    def whenLinksClosed(self) -> Deferred[None]:
        """
        @return: A Deferred that fires once no link is open, so that the
            final answer of a completed session has reached its proxy.
        """
        whenIdle = getattr(self._linkFactory, "whenIdle", None)
        return whenIdle() if whenIdle is not None else succeed(None)

    def addSessionObserver(self, observer: Callable[[Session], None]) -> None:
        """
        Call C{observer} with each session once it is over: complete and
        restored, or failed and no restore is reading it.
        """
        self._observers.append(observer)

    def _consumed(self, session: Session) -> None:
        self.bound.free(session)
        self.log.info(
            "session {session} released ({state})", session=session.name, state=session.state.value
        )
        for observer in self._observers:
            observer(session)


def cacheService(
    imagesDir: Optional[str],
    listen: str,
    local: Optional[str] = None,
    reactor: Any = None,
    verbose: bool = False,
    protocol: str = "stream",
    idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT,
    tls: Optional[TLSFiles] = None,
    link: str = "imgrelay",
    socketMode: int = DEFAULT_MODE,
    limits: Limits = Limits(),
    resumeTimeout: float = DEFAULT_RESUME_TIMEOUT,
    sessionsRoot: Optional[str] = None,
    retain: float = 0.0,
    maxSessions: int = DEFAULT_MAX_SESSIONS,
    clock: Optional[IReactorTime] = None,
    observability: Observability = Observability(),
    maxMemory: Optional[int] = None,
) -> CacheService:
    """
    Make an imgrelay cache to add to an application.

    @param imagesDir: The directory CRIU restores from (C{criu restore -D}),
        for a cache that serves one session at a time; None with
        C{sessionsRoot}.
    @param listen: A server endpoint string for links, e.g. C{"tcp:7070"}.
    @param local: A server endpoint string for CRIU's socket instead of
        C{imagesDir/streamer-serve.sock}.
    @param reactor: The reactor; the global one by default.
    @param verbose: Log every image, not only those of 1 MiB or more.
    @param protocol: CRIU's local protocol: C{"stream"} (on
        C{imagesDir/streamer-serve.sock}) or C{"remote"} (on
        C{imagesDir/img-cache.sock}).
    @param idleTimeout: How long a new connection may take to open its
        exchange: a link's hello (or the cache's answer to it), and with
        C{"remote"} a local connection's header and pipe.
    @param tls: Certificate, key and CA (L{TLSFiles}) for a mutually
        authenticated TLS link; None for plain TCP.
    @param link: C{"imgrelay"} (the default), or C{"criu"} to accept a CRIU
        image-proxy's format: the images are taken as complete when their
        announced size arrived, and nothing is verified.
    @param socketMode: The permission bits of the sockets in C{imagesDir}
        (or in each session's directory).
    @param limits: Images and bytes per session, local connections at once
        (L{imgrelay.Limits}).
    @param resumeTimeout: How long a session whose link broke waits for its
        proxy to reconnect and resume it (120 s by default) before it fails
        and restores waiting for it are told its images do not exist.
    @param sessionsRoot: Instead of C{imagesDir}: serve many sessions at
        once, each in C{sessionsRoot/NAME} (made when the proxy's link
        names session C{NAME}, removed when the session is released), so
        C{criu restore --stream -D sessionsRoot/NAME} restores it.
    @param retain: Seconds a session is kept after its last restore ended,
        so that it can be restored again meanwhile (0: dropped at once).
    @param maxSessions: With C{sessionsRoot}, how many sessions may be
        received at once; a link beyond them is refused.
    @param clock: Where C{retain} is counted; C{reactor} by default.
    @param observability: Progress lines, a stats file, a status fd and an
        HTTP status endpoint (L{imgrelay.Observability}).
    @param maxMemory: The most bytes of images the cache holds at once
        (None: no bound). At the bound it stops reading the links that
        bring more, so proxies and CRIU wait, and goes on as sessions are
        released; if no session is complete to free memory, the newest
        session in progress fails.
    @return: The service.
    @raise UnsafeDirectory: If others could write to C{imagesDir} or
        C{sessionsRoot}.
    @raise ValueError: For both or neither of C{imagesDir} and
        C{sessionsRoot}, or a sessions root with C{local} or the C{"criu"}
        link.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if (imagesDir is None) == (sessionsRoot is None):
        raise ValueError("give either an images directory or a sessions root")
    socketsDir = None
    if sessionsRoot is not None:
        checkDirectory(sessionsRoot)
    elif local is None:
        assert imagesDir is not None
        checkDirectory(imagesDir)
        socket = REMOTE_CACHE_SOCKET if protocol == "remote" else SERVE_SOCKET
        local = localEndpoint(imagesDir, socket, socketMode)
        # The fetch socket goes beside CRIU's; with C{local}, there is none.
        socketsDir = imagesDir
    return CacheService(
        reactor, listen, local, verbose, protocol, idleTimeout, tls, link, limits,
        resumeTimeout=resumeTimeout, sessionsRoot=sessionsRoot, retain=retain, maxSessions=maxSessions,
        socketMode=socketMode, imagesDir=socketsDir, clock=clock, observability=observability,
        maxMemory=maxMemory,
    )
