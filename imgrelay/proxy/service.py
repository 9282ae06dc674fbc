# -*- test-case-name: tests.proxy.test_service -*-
"""
imgrelay-proxy as a service: listen for CRIU's dump on a local socket, and
for each dump open a link to the cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgrelay.core.observers import Observers
from imgrelay.core.errors import SessionError
from imgrelay.local.remote import RemoteFactory
from imgrelay.local.streamcapture import StreamCaptureFactory
from imgrelay.proxy.criulink import CriuLinkSenderFactory
from imgrelay.proxy.feeds import observeProxy
from imgrelay.proxy.link import ProxyLinkFactory
from imgrelay.proxy.packer import Compression
from imgrelay.proxy.reconnect import LinkDriver
from imgrelay.proxy.remote import ProxyRemoteBackend
from imgrelay.proxy.session import ProxySession
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.transport.tls import clientEndpoint
from imgrelay.transport.workers import Workers

if TYPE_CHECKING:
    # Only a name for the type checker: the config sits above the services.
    from imgrelay.config import ProxyConfig

#: Seconds a stopping proxy gives its links to close before it drops them.
CLOSE_GRACE = 5.0

SessionObserver = Callable[[Union[SessionOutcome, Failure]], None]


class ProxyService(MultiService):
    """
    The proxy: serves CRIU's dump socket and relays each dump to the cache
    over its own link.

    @ivar config: What it was told.
    @ivar sessionName: The name each session is sent under.
    @ivar sessions: The sessions in progress.
    @ivar observer: Its statistics (C{observer.stats}), status fd and HTTP
        status.
    """

    log = Logger()

    def __init__(self, config: ProxyConfig, reactor: Any = None) -> None:
        """
        @param config: The proxy's options, checked already.
        @param reactor: The reactor; the global one by default.
        """
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        MultiService.__init__(self)
        self.config = config
        self.reactor = reactor
        assert config.sessionName is not None
        self.sessionName: str = config.sessionName
        self.maxSessions = config.maxSessions
        connect = config.connect
        if isinstance(connect, str):
            self.connectDescription = connect
            self._connect: IStreamClientEndpoint = clientFromString(reactor, connect)
        else:
            self.connectDescription = repr(connect)
            self._connect = connect
        if config.tls is not None:
            assert config.tlsHostname is not None
            self._connect = clientEndpoint(self._connect, config.tlsHostname, config.tls)
            self.connectDescription += f" (TLS, expecting {config.tlsHostname})"
        self._observers: Observers[Union[SessionOutcome, Failure]] = Observers()
        self._startObservers: Observers[ProxySession] = Observers()
        self.sessions: set[ProxySession] = set()
        self._drivers: set[LinkDriver] = set()
        factory: Factory
        limits = config.limits
        if config.protocol == "remote":
            factory = RemoteFactory(ProxyRemoteBackend(self.newSession), reactor, limits, config.idleTimeout)
        else:
            factory = StreamCaptureFactory(self.newSession, reactor, limits)
        localService = strports.service(config.localDescription(), factory, reactor=reactor)
        localService.setServiceParent(self)
        self.workers = Workers(reactor, "imgrelay-proxy-compress")
        self.workers.setServiceParent(self)
        #: How links are compressed.
        self.compression = Compression(config.compress, self.workers.run)
        self.observer = observeProxy(self, config.observability, reactor, {"local": localService})
        self.observer.setServiceParent(self)

    def stopService(self) -> Deferred[Any]:
        """
        Stop listening, and give up every session still in progress: its
        link is closed and the cache fails it.

        @return: A L{Deferred} that fires once every link is closed, the
            cache told: a link still closing (over TLS the close waits for
            the cache's answer) gets up to L{CLOSE_GRACE} seconds before it
            is dropped. Without the wait, a C{--oneshot} proxy exiting
            after its confirmation would cut its TLS link short, and the
            cache would take the cut for a reset and wait for a resume.
        """
        for session in list(self.sessions):
            session.abort("the proxy is shutting down")
        drivers = list(self._drivers)
        closed = gatherResults([driver.whenClosed() for driver in drivers])

        def dropAll() -> None:
            for driver in drivers:
                driver.abort()

        late = self.reactor.callLater(CLOSE_GRACE, dropAll)
        closed.addBoth(lambda result: late.cancel() if late.active() else None)
        return gatherResults([MultiService.stopService(self), closed])

    @property
    def connectEndpoint(self) -> IStreamClientEndpoint:
        """
        The cache's link, as the sessions dial it (TLS included).
        """
        return self._connect

    def addSessionObserver(self, observer: SessionObserver) -> None:
        """
        Call C{observer} with each session's L{SessionOutcome}, or with the
        L{Failure} that ended it.
        """
        self._observers.add(observer)

    def addSessionStartObserver(self, observer: Callable[[ProxySession], None]) -> None:
        """
        Call C{observer} with each session as a dump starts it.
        """
        self._startObservers.add(observer)

    #: How many sessions this proxy starts in its life (None: no limit); a
    #: C{--oneshot} proxy starts one, and a second dump is refused instead
    #: of failing the first.
    maxSessions: Optional[int]
    _started = 0

    def newSession(self) -> ProxySession:
        """
        A dump connected: start its session and dial the cache.

        @raise SessionError: If this proxy starts no more sessions.
        """
        if self.maxSessions is not None and self._started >= self.maxSessions:
            raise SessionError(f"this proxy serves {self.maxSessions} session(s) and has started them")
        self._started += 1
        config = self.config
        session = ProxySession(
            self.sessionName, self.reactor.seconds, keepImages=config.protocol == "remote", verbose=config.verbose,
            maxNameLength=config.limits.maxNameLength,
        )
        self.sessions.add(session)
        self._startObservers.tell(session)
        self.log.info(
            "dump connected; session {session}: connecting to the cache at {cache}",
            session=self.sessionName, cache=self.connectDescription,
        )
        session.addOverObserver(lambda result: self._ended(result, session))
        if config.link == "criu":
            d = self._connect.connect(CriuLinkSenderFactory(session))
            d.addErrback(
                lambda f: session.failed(f"cannot reach the cache at {self.connectDescription}: {f.getErrorMessage()}")
            )
        else:
            factory = ProxyLinkFactory(
                session, self.reactor, config.window, config.idleTimeout, self.compression, config.verdict,
            )
            driver = LinkDriver(
                self._connect, factory, self.reactor, self.connectDescription, config.reconnectTimeout,
            )
            self._drivers.add(driver)
            driver.whenClosed().addCallback(lambda _: self._drivers.discard(driver))
            driver.start()
        return session

    def _ended(self, result: Union[SessionOutcome, Failure], session: ProxySession) -> None:
        self.sessions.discard(session)
        self._observers.tell(result)

