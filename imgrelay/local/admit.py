# -*- test-case-name: tests.local.test_admit -*-
"""
The factory behind every local socket (CRIU's, and C{imgrelay fetch}'s): it
serves so many connections at once, refuses the rest with a log line, and
hands each protocol it builds the daemon's limits and a way to say it
closed, so that no protocol needs to ask its factory for anything.
"""

from __future__ import annotations

from typing import Callable, Generic, Optional, TypeVar

from twisted.internet.interfaces import IAddress, IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from imgrelay.core.limits import Limits

_P = TypeVar("_P", bound=Protocol, covariant=True)


class AdmittingFactory(Factory, Generic[_P]):
    """
    Admit up to C{limits.maxLocalConnections} connections at once; beyond
    that, a new connection gets no protocol (Twisted closes it at once)
    and a log line names the limit.

    A subclass says in L{buildAdmitted} which protocol serves an admitted
    connection, and hands it C{closed}, which the protocol calls from its
    C{connectionLost}.

    @ivar limits: The daemon's limits, for this socket and its protocols.
    @ivar openConnections: Connections admitted and not yet closed.
    """

    log = Logger()
    noisy = False

    def __init__(self, limits: Limits) -> None:
        """
        @param limits: The daemon's limits; C{maxLocalConnections} bounds
            this socket's connections.
        """
        self.limits = limits
        self.openConnections = 0

    def buildProtocol(self, addr: Optional[IAddress]) -> Optional[_P]:
        """
        @return: A protocol for a new connection, or None to close it at
            once because C{limits.maxLocalConnections} are open.
        """
        if self.openConnections >= self.limits.maxLocalConnections:
            self.log.error(
                "local connection refused: {count} already open, the limit (--max-local-connections)",
                count=self.openConnections,
            )
            return None
        protocol = self.buildAdmitted(self._connectionClosed)
        protocol.factory = self
        self.openConnections += 1
        return protocol

    def _connectionClosed(self) -> None:
        self.openConnections -= 1

    def buildAdmitted(self, closed: Callable[[], None]) -> _P:
        """
        Build the protocol for an admitted connection.

        @param closed: What the protocol calls once, from C{connectionLost}.
        @return: The protocol.
        """
        raise NotImplementedError(f"{type(self).__name__} builds no protocol")


class AdmittedProtocol(Protocol):
    """
    The base of the protocols an L{AdmittingFactory} builds: the transport
    they are connected to, and the same as a producer, for the protocols'
    own use.
    """

    def _transport(self) -> ITransport:
        assert self.transport is not None, "not connected"
        return self.transport

    def _producer(self) -> IPushProducer:
        return IPushProducer(self._transport())
