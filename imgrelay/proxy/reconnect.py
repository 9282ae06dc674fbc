# -*- test-case-name: tests.scenarios.test_resume -*-
"""
Keep one session's link to the cache up: connect, and after a broken
connection connect again with exponential back-off (L{ClientService}), so
the session resumes; give the session up once no connection has been
accepted for a while.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.proxy.link import ProxyLinkFactory
from imgrelay.proxy.interfaces import SessionOutcome

#: Give the session up after this many seconds without an accepted link.
DEFAULT_GIVE_UP = 60.0


def defaultRetryPolicy() -> Callable[[int], float]:
    """
    @return: Retry after 0.2 s (the first attempt counts as 1), doubling up
        to 5 s, with up to 10 % jitter.
    """
    import random

    return _policy(random.random)


def _policy(jitter: Callable[[], float]) -> Callable[[int], float]:
    # backoffPolicy adds jitter() seconds; keep it proportional to the short
    # first delays.
    base = backoffPolicy(initialDelay=0.1, maxDelay=5.0, factor=2.0, jitter=lambda: 0.0)
    return lambda attempt: base(attempt) * (1.0 + 0.1 * jitter())


@implementer(IStreamClientEndpoint)
class _RecordingEndpoint:
    """
    An endpoint that remembers why its last connection attempt failed.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, failed: Callable[[Failure], None]) -> None:
        self._endpoint = endpoint
        self._failed = failed

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d = self._endpoint.connect(factory)

        def failed(f: Failure) -> Failure:
            self._failed(f)
            return f

        return d.addErrback(failed)


class LinkDriver:
    """
    See the module docstring.

    @ivar service: The L{ClientService} that dials the cache.
    @ivar lastError: Why the last connection attempt or connection failed.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        factory: ProxyLinkFactory,
        clock: IReactorTime,
        description: str,
        giveUp: float = DEFAULT_GIVE_UP,
        retryPolicy: Optional[Callable[[int], float]] = None,
    ) -> None:
        """
        @param endpoint: Where the cache listens.
        @param factory: The session's link factory.
        @param clock: For retries and the give-up timer.
        @param description: The cache's address, for messages.
        @param giveUp: Seconds without an accepted connection after which
            the session fails.
        @param retryPolicy: Seconds to wait before attempt N (see
            L{ClientService}); L{defaultRetryPolicy} by default.
        """
        self._factory = factory
        self._stream = factory.stream
        self._session = factory.session
        self._clock = clock
        self._description = description
        self.giveUp = giveUp
        self.lastError: Optional[str] = None
        self._timer: Optional[IDelayedCall] = None
        self._outageLogged = False
        self._closed = False
        self._closedWaiters: list[Deferred[None]] = []
        self.service = ClientService(
            _RecordingEndpoint(endpoint, self._attemptFailed), factory,
            retryPolicy=retryPolicy or defaultRetryPolicy(), clock=clock,
        )
        self._stream.addLinkObserver(self._linkChanged)
        self._session.addOverObserver(self._over)

    def start(self) -> None:
        """
        Dial the cache, and keep dialling until the session is over.
        """
        self._arm()
        self.service.startService()

    def _arm(self) -> None:
        if self._timer is None and not self._session.over:
            self._timer = self._clock.callLater(self.giveUp, self._giveUp)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _attemptFailed(self, failure: Failure) -> None:
        self.lastError = failure.getErrorMessage()
        if not self._outageLogged:
            self._outageLogged = True
            self.log.warn(
                "session {session}: cannot reach the cache at {cache}: {error}; "
                "retrying for up to {giveUp:g} s",
                session=self._session.name, cache=self._description, error=self.lastError,
                giveUp=self.giveUp,
            )

    def _linkChanged(self, up: bool) -> None:
        if self._session.over:
            self._stop()
        elif up:
            self._outageLogged = False
            self._disarm()
        else:
            self._arm()

    def _giveUp(self) -> None:
        self._timer = None
        why = f" (last error: {self.lastError})" if self.lastError else ""
        self._session.failed(
            f"no link to the cache at {self._description} for {self.giveUp:g} s{why}; giving up"
        )

    def _over(self, result: Union[SessionOutcome, Failure]) -> None:
        self._disarm()
        if not self._stream.connected:
            self._stop()
        # Otherwise the connection closes once what it holds is sent, and
        # the service stops then (L{_linkChanged}).

    def _stop(self) -> None:
        if self.service.running:
            d = self.service.stopService()
            d.addBoth(lambda _: self._finished())
        else:
            self._finished()

    def _finished(self) -> None:
        self._closed = True
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenClosed(self) -> Deferred[None]:
        """
        @return: A L{Deferred} that fires once the session is over and its
            link is closed: a link that was closing (TLS waits for the
            cache's answer to its close) has closed, and dialling stopped.
        """
        if self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def abort(self) -> None:
        """
        Drop the link now, if one is up, without waiting for what it holds
        to be sent.
        """
        protocol = self._factory.current
        if protocol is not None:
            protocol.abort()

