"""
Tests for L{imgrelay.local.admit}: a local socket serves so many connections
at once, refuses the rest with a log line, and hands each protocol the
limits and a way to say it closed; and the four local factories built on
it.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.protocol import Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cache.fetchserve import FetchServeFactory
from imgrelay.core.limits import Limits
from imgrelay.core.slot import SessionSlot
from imgrelay.local.admit import AdmittingFactory
from imgrelay.local.remote import RemoteFactory
from imgrelay.cache.remote import CacheRemoteBackend
from imgrelay.local.streamcapture import StreamCaptureFactory
from imgrelay.local.streamserve import StreamServeFactory
from imgrelay.proxy.session import ProxySession
from imgrelay.wire.criu import frame
from imgrelay.wire.pb import criu_pb2


class _Closing(Protocol):
    """
    A protocol that says it closed, as the local protocols do.
    """

    def __init__(self, limits: Limits, closed: Callable[[], None]) -> None:
        self.limits = limits
        self._closed = closed

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self._closed()


class _Counted(AdmittingFactory[_Closing]):
    """
    The smallest admitting factory.
    """

    def buildAdmitted(self, closed: Callable[[], None]) -> _Closing:
        return _Closing(self.limits, closed)


class AdmittingFactoryTests(SynchronousTestCase):
    """
    L{AdmittingFactory} admits up to C{maxLocalConnections} connections at
    once.
    """

    def test_admitsUpToLimit(self) -> None:
        """
        Up to the limit every connection gets a protocol, built by
        L{AdmittingFactory.buildAdmitted} and naming its factory; past it,
        none.
        """
        factory = _Counted(Limits(maxLocalConnections=3))
        protocols = [factory.buildProtocol(None) for _ in range(3)]
        for protocol in protocols:
            assert protocol is not None
            self.assertIs(protocol.factory, factory)
        self.assertEqual(factory.openConnections, 3)
        self.assertIsNone(factory.buildProtocol(None))
        self.assertEqual(factory.openConnections, 3)

    def test_protocolGetsLimits(self) -> None:
        """
        Each protocol is handed the factory's limits.
        """
        limits = Limits(maxHeaderSize=20)
        protocol = _Counted(limits).buildProtocol(None)
        assert protocol is not None
        self.assertIs(protocol.limits, limits)

    def test_refusalLogged(self) -> None:
        """
        A refused connection is logged as an error naming the connections
        open and the option that limits them, in the subclass's namespace.
        """
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        factory = _Counted(Limits(maxLocalConnections=1))
        factory.buildProtocol(None)
        self.assertEqual(len(logged), 0)
        factory.buildProtocol(None)
        self.assertEqual(len(logged), 1)
        event = logged[0]
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertEqual(event["count"], 1)
        self.assertIn("--max-local-connections", event["log_format"])
        self.assertEqual(event["log_namespace"], f"{__name__}._Counted")

    def test_closedCountsDown(self) -> None:
        """
        A protocol that says it closed makes room for another connection.
        """
        factory = _Counted(Limits(maxLocalConnections=1))
        first = factory.buildProtocol(None)
        assert first is not None
        first.connectionLost()
        self.assertEqual(factory.openConnections, 0)
        self.assertIsNotNone(factory.buildProtocol(None))
        self.assertEqual(factory.openConnections, 1)

    def test_buildAdmittedRequired(self) -> None:
        """
        L{AdmittingFactory} itself builds no protocol.
        """
        factory: AdmittingFactory[Protocol] = AdmittingFactory(Limits())
        self.assertRaises(NotImplementedError, factory.buildProtocol, None)


class LocalFactoriesTests(SynchronousTestCase):
    """
    The four local factories admit through L{AdmittingFactory}, and their
    protocols say when they closed and heed the limits they are handed.
    """

    def factories(self, limits: Limits) -> dict[str, AdmittingFactory[Protocol]]:
        reactor = MemoryReactorClock()
        return {
            "capture": StreamCaptureFactory(lambda: ProxySession("s"), reactor, limits),
            "serve": StreamServeFactory(SessionSlot(), reactor, limits),
            "fetch": FetchServeFactory(SessionSlot(), reactor, limits),
            "remote": RemoteFactory(CacheRemoteBackend(SessionSlot()), reactor, limits),
        }

    def test_limitAndClose(self) -> None:
        """
        Each factory refuses past the limit, and serves again once its
        protocol closed.
        """
        for name, factory in self.factories(Limits(maxLocalConnections=1)).items():
            first: Optional[Protocol] = factory.buildProtocol(None)
            assert first is not None, name
            self.assertIsNone(factory.buildProtocol(None), name)
            first.connectionLost(Failure(Exception("closed")))
            self.assertEqual(factory.openConnections, 0, name)
            self.assertIsNotNone(factory.buildProtocol(None), name)

    def test_headerLimit(self) -> None:
        """
        The protocols that read CRIU's headers end a connection whose
        header is over the factory's C{maxHeaderSize}.
        """
        oversized = {
            "capture": frame(criu_pb2.StreamRequest(filename="a" * 30 + ".img")),
            "serve": frame(criu_pb2.StreamRequest(filename="a" * 30 + ".img")),
            "remote": frame(criu_pb2.LocalImageHeader(name="a" * 30 + ".img", snapshot_id="", open_mode=0)),
        }
        factories = self.factories(Limits(maxHeaderSize=20))
        for name, data in oversized.items():
            protocol = factories[name].buildProtocol(None)
            assert protocol is not None
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(data)
            self.assertTrue(transport.disconnecting or transport.disconnected, name)
