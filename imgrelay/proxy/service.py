# -*- test-case-name: tests.proxy.test_service -*-
"""
imgrelay-proxy as a service: listen for CRIU's dump on a local socket, and
for each dump open a link to the cache.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgrelay.local.criulink import CriuLinkSenderFactory
from imgrelay.core.errors import SessionError
from imgrelay.observe.feeds import observeProxy
from imgrelay.core.limits import DEFAULT_IDLE_TIMEOUT, Limits
from imgrelay.transport.localsock import DEFAULT_MODE, checkDirectory, localEndpoint
from imgrelay.proxy.stream import DEFAULT_WINDOW, MIN_WINDOW
from imgrelay.observe.service import Observability
from imgrelay.proxy.link import ProxyLinkFactory
from imgrelay.proxy.reconnect import DEFAULT_GIVE_UP, LinkDriver
from imgrelay.proxy.session import ProxySession, SessionOutcome
from imgrelay.local.remote import RemoteFactory
from imgrelay.local.remotesides import ProxyRemoteBackend
from imgrelay.local.streamcapture import StreamCaptureFactory
from imgrelay.transport.tls import TLSFiles, clientEndpoint, hostOf

#: The socket C{criu dump --stream -D DIR} connects to, inside DIR.
CAPTURE_SOCKET = "streamer-capture.sock"

#: The socket C{criu dump --remote} connects to, in its images directory.
REMOTE_PROXY_SOCKET = "img-proxy.sock"

#: CRIU's local protocols.
PROTOCOLS = ("stream", "remote")

#: Link formats: imgrelay's own, or CRIU's image-proxy to image-cache.
LINKS = ("imgrelay", "criu")


SessionObserver = Callable[[Union[SessionOutcome, Failure]], None]


class ProxyService(MultiService):
    """
    The proxy: serves C{streamer-capture.sock} and relays each dump to the
    cache over its own link.

    @ivar sessionName: The name each session is sent under.
    @ivar observer: Its statistics (C{observer.stats}), status fd and HTTP
        status.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        local: str,
        connect: Union[str, IStreamClientEndpoint],
        sessionName: str,
        verbose: bool = False,
        protocol: str = "stream",
        idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT,
        tls: Optional[TLSFiles] = None,
        tlsHostname: Optional[str] = None,
        link: str = "imgrelay",
        limits: Limits = Limits(),
        window: int = DEFAULT_WINDOW,
        reconnectTimeout: float = DEFAULT_GIVE_UP,
        observability: Observability = Observability(),
    ) -> None:
        """
        @param reactor: The reactor.
        @param local: Server endpoint string for CRIU's socket.
        @param connect: The cache's link: a client endpoint or its string.
        @param sessionName: The session name sent in hello.
        @param verbose: Log every image, not only large ones.
        @param protocol: CRIU's local protocol, C{"stream"} or C{"remote"}.
        @param idleTimeout: How long a new connection may take to open its
            exchange: a link's hello (or the cache's answer to it), and with
            C{"remote"} a local connection's header and pipe.
        @param tls: Certificate, key and CA for a mutually authenticated TLS
            link; None for plain TCP.
        @param tlsHostname: The name the cache's certificate must carry; by
            default the host of C{connect}.
        @param link: C{"imgrelay"}, or C{"criu"} to feed a CRIU image-cache
            in its own format (no acknowledgement, no checksum).
        @param limits: Local connections at once (the cache enforces the
            per-session limits).
        @param window: The most bytes of a session held unacknowledged by
            the cache, to send again after a broken link.
        @param reconnectTimeout: Seconds without a link accepted by the
            cache after which a session fails.
        @param observability: Stats file, status fd, HTTP.
        @raise ValueError: For an unknown protocol, unreadable TLS files,
            no host name to check the cache's certificate against, or a
            window under L{MIN_WINDOW}.
        """
        if window < MIN_WINDOW:
            raise ValueError(f"window of {window} bytes is under {MIN_WINDOW}")
        self.window = window
        self.limits = limits
        self.idleTimeout = idleTimeout
        self.reconnectTimeout = reconnectTimeout
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        if link not in LINKS:
            raise ValueError(f"unknown link format {link!r}")
        self.link = link
        self.verbose = verbose
        self.protocol = protocol
        MultiService.__init__(self)
        self._reactor = reactor
        if isinstance(connect, str):
            self.connectDescription = connect
            self._connect: IStreamClientEndpoint = clientFromString(reactor, connect)
            tlsHostname = tlsHostname or hostOf(connect)
        else:
            self.connectDescription = repr(connect)
            self._connect = connect
        if tls is not None:
            if not tlsHostname:
                raise ValueError("TLS needs the cache's host name to check its certificate against")
            self._connect = clientEndpoint(self._connect, tlsHostname, tls)
            self.connectDescription += f" (TLS, expecting {tlsHostname})"
        self.sessionName = sessionName
        self._observers: list[SessionObserver] = []
        self._startObservers: list[Callable[[ProxySession], None]] = []
        self.sessions: set[ProxySession] = set()
        factory: Factory
        if protocol == "remote":
            factory = RemoteFactory(ProxyRemoteBackend(self.newSession), reactor, limits, idleTimeout)
        else:
            factory = StreamCaptureFactory(self.newSession, reactor, limits)
        localService = strports.service(local, factory, reactor=reactor)
        localService.setServiceParent(self)
        self.observer = observeProxy(self, observability, reactor, {"local": localService})
        self.observer.setServiceParent(self)

    def stopService(self) -> Any:
        """
        Stop listening, and give up every session still in progress: its
        link is closed and the cache fails it.
        """
        for session in list(self.sessions):
            session.abort("the proxy is shutting down")
        return MultiService.stopService(self)

    def addSessionObserver(self, observer: SessionObserver) -> None:
        """
        Call C{observer} with each session's L{SessionOutcome}, or with the
        L{Failure} that ended it.
        """
        self._observers.append(observer)

    def addSessionStartObserver(self, observer: Callable[[ProxySession], None]) -> None:
        """
        Call C{observer} with each session as a dump starts it.
        """
        self._startObservers.append(observer)

    #: How many sessions this proxy starts in its life (None: no limit); a
    #: C{--oneshot} proxy starts one, and a second dump is refused instead
    #: of failing the first.
    maxSessions: Optional[int] = None
    _started = 0

    def newSession(self) -> ProxySession:
        """
        A dump connected: start its session and dial the cache.

        @raise SessionError: If this proxy starts no more sessions.
        """
        if self.maxSessions is not None and self._started >= self.maxSessions:
            raise SessionError(f"this proxy serves {self.maxSessions} session(s) and has started them")
        self._started += 1
        session = ProxySession(
            self.sessionName, self._reactor.seconds, keepImages=self.protocol == "remote", verbose=self.verbose,
            maxNameLength=self.limits.maxNameLength,
        )
        self.sessions.add(session)
        for observer in self._startObservers:
            observer(session)
        self.log.info(
            "dump connected; session {session}: connecting to the cache at {cache}",
            session=self.sessionName, cache=self.connectDescription,
        )
        session.addOverObserver(lambda result: self._ended(result, session))
        if self.link == "criu":
            d = self._connect.connect(CriuLinkSenderFactory(session))
            d.addErrback(
                lambda f: session.failed(f"cannot reach the cache at {self.connectDescription}: {f.getErrorMessage()}")
            )
        else:
            LinkDriver(
                self._connect, ProxyLinkFactory(session, self._reactor, self.window, self.idleTimeout), self._reactor,
                self.connectDescription, self.reconnectTimeout,
            ).start()
        return session

    def _ended(self, result: Union[SessionOutcome, Failure], session: ProxySession) -> None:
        self.sessions.discard(session)
        for observer in self._observers:
            observer(result)


def proxyService(
    imagesDir: str,
    connect: Union[str, IStreamClientEndpoint],
    sessionName: Optional[str] = None,
    local: Optional[str] = None,
    reactor: Any = None,
    verbose: bool = False,
    protocol: str = "stream",
    idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT,
    tls: Optional[TLSFiles] = None,
    tlsHostname: Optional[str] = None,
    link: str = "imgrelay",
    socketMode: int = DEFAULT_MODE,
    limits: Limits = Limits(),
    window: int = DEFAULT_WINDOW,
    reconnectTimeout: float = DEFAULT_GIVE_UP,
    observability: Observability = Observability(),
) -> ProxyService:
    """
    Make an imgrelay proxy to add to an application.

    @param imagesDir: The directory CRIU dumps to (C{criu dump -D}).
    @param connect: The cache's link address: a client endpoint string such
        as C{"tcp:host=dest:port=7070"}, or an endpoint.
    @param sessionName: The session's name; by default this host's name and
        C{imagesDir}.
    @param local: A server endpoint string for CRIU's socket instead of
        C{imagesDir/streamer-capture.sock}.
    @param reactor: The reactor; the global one by default.
    @param verbose: Log every image, not only those of 1 MiB or more.
    @param protocol: CRIU's local protocol: C{"stream"} (C{criu dump
        --stream}, on C{imagesDir/streamer-capture.sock}) or C{"remote"}
        (C{criu dump --remote}, on C{imagesDir/img-proxy.sock}).
    @param idleTimeout: How long a new connection may take to open its
        exchange: a link's hello (or the cache's answer to it), and with
        C{"remote"} a local connection's header and pipe.
    @param tls: Certificate, key and CA (L{TLSFiles}) for a mutually
        authenticated TLS link; None for plain TCP.
    @param tlsHostname: The name the cache's certificate must carry; by
        default the host of C{connect}.
    @param link: C{"imgrelay"} (the default), or C{"criu"} to feed a CRIU
        image-cache in its own format: no acknowledgements, no final
        handshake, no checksums.
    @param socketMode: The permission bits of the socket in C{imagesDir}.
    @param limits: Local connections at once (L{imgrelay.Limits}).
    @param window: The most bytes of a session held unacknowledged by the
        cache (64 MiB by default): CRIU's pipes are held when it is full.
    @param reconnectTimeout: After a broken link, the proxy reconnects with
        back-off and resumes the session; it fails the session after this
        many seconds without a link the cache accepted (60 by default).
    @param observability: A stats file, a status fd and an HTTP status
        endpoint (L{imgrelay.Observability}).
    @return: The service.
    @raise UnsafeDirectory: If others could write to C{imagesDir}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if sessionName is None:
        sessionName = defaultSessionName(imagesDir)
    socket = REMOTE_PROXY_SOCKET if protocol == "remote" else CAPTURE_SOCKET
    if local is None:
        checkDirectory(imagesDir)
        local = localEndpoint(imagesDir, socket, socketMode)
    return ProxyService(
        reactor, local, connect, sessionName, verbose, protocol, idleTimeout,
        tls, tlsHostname, link, limits, window, reconnectTimeout, observability,
    )


def defaultSessionName(imagesDir: str, host: Optional[str] = None) -> str:
    """
    A session name that is also a safe directory name on the cache (see
    L{imgrelay.core.names.checkSessionDirName}), distinct per host and images
    directory: C{HOST-DIRNAME-HASH}, with the images directory's last
    component and the first 8 hex digits of the SHA-256 of its absolute
    path; characters other than letters, digits, C{.}, C{_} and C{-} become
    C{_}.

    @param imagesDir: The images directory.
    @param host: The host's name; this host's by default.
    @return: The name.
    """
    import hashlib
    import os
    import re
    import socket

    path = os.path.abspath(imagesDir)
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]

    def safe(part: str, longest: int) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", part)[:longest] or "_"

    host = host if host is not None else socket.gethostname()
    name = f"{safe(host, 120)}-{safe(os.path.basename(path) or 'root', 120)}-{digest}"
    return "_" + name[1:] if name.startswith(".") else name
