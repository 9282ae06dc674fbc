# -*- test-case-name: tests.test_cache -*-
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
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.logger import Logger

from imgrelay._cachelink import CacheLinkFactory
from imgrelay._criulink import CriuLinkReceiverFactory
from imgrelay._fetchserve import FetchServeFactory
from imgrelay._fetchwire import FETCH_SOCKET
from imgrelay._limits import Limits
from imgrelay._localsock import DEFAULT_MODE, checkDirectory, localEndpoint
from imgrelay._proxy import LINKS, PROTOCOLS
from imgrelay._remote import DEFAULT_IDLE_TIMEOUT, RemoteFactory
from imgrelay._remotesides import CacheRemoteBackend
from imgrelay._store import Session, SessionSlot
from imgrelay._streamserve import StreamServeFactory
from imgrelay._tls import TLSFiles, serverService

#: The socket C{criu restore --stream -D DIR} connects to, inside DIR.
SERVE_SOCKET = "streamer-serve.sock"

#: The socket C{criu restore --remote} connects to, in its images directory.
REMOTE_CACHE_SOCKET = "img-cache.sock"


class CacheService(MultiService):
    """
    The cache: links in on C{listen}, restores on C{local}.

    @ivar slot: The session being received and served.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, listen: str, local: str, verbose: bool = False, protocol: str = "stream",
        idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT, tls: Optional[TLSFiles] = None,
        link: str = "imgrelay",
        limits: Limits = Limits(), fetch: Optional[str] = None,
    ) -> None:
        """
        @param reactor: The reactor.
        @param listen: Server endpoint string for the link.
        @param local: Server endpoint string for CRIU's socket.
        @param verbose: Log every image, not only large ones.
        @param protocol: CRIU's local protocol, C{"stream"} or C{"remote"}.
        @param idleTimeout: With C{"remote"}, how long a local connection
            may take to send its header and pipe.
        @param tls: Certificate, key and CA for a mutually authenticated TLS
            link: only proxies certified by that CA get in. None for plain
            TCP.
        @param link: C{"imgrelay"}, or C{"criu"} to accept a CRIU
            image-proxy's format (nothing can be verified).
        @param limits: Images and bytes per session, local connections.
        @param fetch: Server endpoint string for C{imgrelay fetch}'s
            socket, or None for none.
        @raise ValueError: For an unknown protocol or unreadable TLS files.
        """
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        if link not in LINKS:
            raise ValueError(f"unknown link format {link!r}")
        MultiService.__init__(self)
        self._observers: list[Callable[[Session], None]] = []
        self.slot = SessionSlot(self._consumed, reactor.seconds)
        self._linkFactory: "CacheLinkFactory | CriuLinkReceiverFactory"
        if link == "criu":
            self._linkFactory = CriuLinkReceiverFactory(self.slot, verbose)
        else:
            self._linkFactory = CacheLinkFactory(self.slot, reactor.seconds, reactor, verbose, limits)
        if tls is None:
            self._link = strports.service(listen, self._linkFactory, reactor=reactor)
        else:
            self._link = serverService(reactor, listen, self._linkFactory, tls)
        self._link.setServiceParent(self)
        factory: Factory
        if protocol == "remote":
            factory = RemoteFactory(CacheRemoteBackend(self.slot), reactor, idleTimeout)
        else:
            factory = StreamServeFactory(self.slot, reactor)
        factory.connectionLimit = limits.maxLocalConnections
        strports.service(local, factory, reactor=reactor).setServiceParent(self)
        if fetch is not None:
            fetcher = FetchServeFactory(self.slot, reactor)
            fetcher.connectionLimit = limits.maxLocalConnections
            strports.service(fetch, fetcher, reactor=reactor).setServiceParent(self)

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
        Stop listening and close every link; sessions still receiving fail.
        """
        self._linkFactory.abortAll()
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
        self.log.info(
            "session {session} released ({state})", session=session.name, state=session.state.value
        )
        for observer in self._observers:
            observer(session)


def cacheService(
    imagesDir: str,
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
    fetch: Optional[str] = None,
) -> CacheService:
    """
    Make an imgrelay cache to add to an application.

    @param imagesDir: The directory CRIU restores from (C{criu restore -D}).
    @param listen: A server endpoint string for links, e.g. C{"tcp:7070"}.
    @param local: A server endpoint string for CRIU's socket instead of
        C{imagesDir/streamer-serve.sock}.
    @param reactor: The reactor; the global one by default.
    @param verbose: Log every image, not only those of 1 MiB or more.
    @param protocol: CRIU's local protocol: C{"stream"} (on
        C{imagesDir/streamer-serve.sock}) or C{"remote"} (on
        C{imagesDir/img-cache.sock}).
    @param idleTimeout: With C{"remote"}, how long a local connection may
        take to send its header and pipe.
    @param tls: Certificate, key and CA (L{TLSFiles}) for a mutually
        authenticated TLS link; None for plain TCP.
    @param link: C{"imgrelay"} (the default), or C{"criu"} to accept a CRIU
        image-proxy's format: the images are taken as complete when their
        announced size arrived, and nothing is verified.
    @param socketMode: The permission bits of the socket in C{imagesDir}.
    @param limits: Images and bytes per session, local connections at once
        (L{imgrelay.Limits}).
    @param fetch: A server endpoint string for C{imgrelay fetch}'s socket;
        by default C{imagesDir/imgrelay-fetch.sock} when C{local} is not
        given, else none.
    @return: The service.
    @raise UnsafeDirectory: If others could write to C{imagesDir}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    socket = REMOTE_CACHE_SOCKET if protocol == "remote" else SERVE_SOCKET
    if local is None:
        checkDirectory(imagesDir)
        local = localEndpoint(imagesDir, socket, socketMode)
        if fetch is None:
            fetch = localEndpoint(imagesDir, FETCH_SOCKET, socketMode)
    return CacheService(
        reactor, listen, local, verbose, protocol, idleTimeout, tls, link, limits, fetch
    )
