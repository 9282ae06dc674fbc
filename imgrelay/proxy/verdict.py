# -*- test-case-name: tests.proxy.test_verdict -*-
"""
The source's end of the verdict link (L{VerdictClient}): once the cache
confirmed the session of C{imgrelay migrate}, a connection of its own to
hear how the cache's restore ended, and to answer it (C{Commit}: resume the
restored tree; C{Abort}: kill it). A lost connection is dialled again; the
cache says its verdict again, and takes the answer again, as often as it
is asked.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgrelay.core.errors import SessionError
from imgrelay.proxy.reconnect import defaultRetryPolicy
from imgrelay.wire.framing import FramingError, HeaderReceived
from imgrelay.wire.link import VERDICT_VERSION, ProxyMessage, cacheMessageFramer, frame
from imgrelay.wire.pb import link_pb2


class _VerdictProtocol(Protocol):
    def __init__(self, client: VerdictClient) -> None:
        self._client = client
        self._framer = cacheMessageFramer()

    def connectionMade(self) -> None:
        self._client._connected(self)

    def send(self, message: ProxyMessage) -> None:
        assert self.transport is not None
        self.transport.write(frame(message))

    def dataReceived(self, data: bytes) -> None:
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._client._received(event.message)
        except FramingError as e:
            self._client.fail(f"the cache sent malformed data on the verdict link: {e}")

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self._client._lost(self, reason.getErrorMessage())


class VerdictClient:
    """
    See the module docstring.

    @ivar verdict: Fires with the cache's L{link_pb2.Verdict}, or fails
        with L{SessionError} (no verdict link for C{giveUp} seconds, or the
        cache refused it).
    @ivar resolved: Fires with the cache's L{link_pb2.Resolved} once it
        acted on the answer, or fails likewise once an answer was given.
    """

    log = Logger()

    def __init__(
        self, endpoint: IStreamClientEndpoint, session: str, token: bytes, reactor: Any, giveUp: float,
        retryPolicy: Optional[Callable[[int], float]] = None,
    ) -> None:
        """
        @param endpoint: The cache's link.
        @param session: The session's name.
        @param token: The session's resume token.
        @param giveUp: Seconds without a verdict link after which it fails.
        """
        self._session = session
        self._token = token
        self._reactor = reactor
        self.giveUp = giveUp
        self.verdict: Deferred[link_pb2.Verdict] = Deferred()
        self.resolved: Deferred[link_pb2.Resolved] = Deferred()
        self._answer: Optional[ProxyMessage] = None
        self._current: Optional[_VerdictProtocol] = None
        self._timer: Optional[IDelayedCall] = None
        self._lastError = "no connection yet"
        factory = Factory.forProtocol(lambda: _VerdictProtocol(self))
        self._service = ClientService(
            endpoint, factory, retryPolicy=retryPolicy or defaultRetryPolicy(), clock=reactor,
        )

    def start(self) -> None:
        """
        Dial the cache.
        """
        self._arm()
        self._service.startService()

    def answer(self, commit: bool, reason: str = "") -> Deferred[link_pb2.Resolved]:
        """
        Tell the cache to resume the restored tree (C{commit}) or to kill it,
        on this link or the next.

        @return: L{resolved}.
        """
        self._answer = ProxyMessage(commit=link_pb2.Commit()) if commit else ProxyMessage(
            abort=link_pb2.Abort(reason=reason or "the source keeps the process")
        )
        if self._current is not None:
            self._current.send(self._answer)
        return self.resolved

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self._reactor.callLater(self.giveUp, self._givenUp)

    def _disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _givenUp(self) -> None:
        self._timer = None
        self.fail(f"no verdict link to the cache for {self.giveUp:g} s (last: {self._lastError})")

    def _connected(self, protocol: _VerdictProtocol) -> None:
        # The give-up timer runs on until the cache answers: a relay or a
        # firewall may take a connection and drop it at once.
        self._current = protocol
        protocol.send(ProxyMessage(hello=link_pb2.Hello(
            version=VERDICT_VERSION, session=self._session, resume_token=self._token, verdict=True,
        )))
        if self._answer is not None:
            protocol.send(self._answer)

    def _received(self, message: link_pb2.CacheMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind in ("accept", "verdict", "resolved"):
            self._disarm()
        if kind == "verdict":
            if not self.verdict.called:
                self.verdict.callback(message.verdict)
        elif kind == "resolved":
            if not self.resolved.called:
                self.resolved.callback(message.resolved)
            self.stop()
        elif kind == "refuse":
            self.fail(f"the cache refused the verdict link: {message.refuse.reason}")
        elif kind != "accept":
            self.fail(f"the cache sent {kind} on the verdict link")

    def _lost(self, protocol: _VerdictProtocol, why: str) -> None:
        if self._current is protocol:
            self._current = None
            self._lastError = why
            if not self.resolved.called:
                self._arm()

    def fail(self, reason: str) -> None:
        """
        Give up: L{verdict} and L{resolved}, if still waiting, fail with
        C{reason}.
        """
        if not self.verdict.called:
            self.verdict.errback(SessionError(reason))
        if self._answer is not None and not self.resolved.called:
            # Only an answer given waits for this.
            self.resolved.errback(SessionError(reason))
        self.stop()

    def stop(self) -> None:
        """
        Stop dialling; close the link.
        """
        self._disarm()
        if self._service.running:
            self._service.stopService()
