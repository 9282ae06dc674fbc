"""
Tests for L{imgrelay.core.limits}: each limit ends only the offending session
or connection, with a reason.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.core.limits import Limits
from imgrelay.core.store import SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.local.streamserve import StreamServeFactory
from imgrelay.wire.link import CacheMessage
from imgrelay.core.names import BadName
from imgrelay.wire.pb.criu_pb2 import StreamRequest
from imgrelay.proxy.link import ProxyLinkFactory
from imgrelay.proxy.session import ProxySession
from imgrelay.tap import CacheOptions, ProxyOptions
from imgrelay.testing import criu
from tests.cache.helpers import chunk, hello, imageClose, imageOpen, wholeImage


class SessionLimitTests(SynchronousTestCase):
    """
    The cache refuses a session that brings more images or bytes than its
    limits.
    """

    def connect(self, limits: Limits) -> tuple[CacheLinkProtocol, StringTransport]:
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds, limits=limits)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_maxImages(self) -> None:
        """
        Up to C{maxImages} images are taken (a new version of one does not
        count again); one more fails the session naming the option.
        """
        protocol, transport = self.connect(Limits(maxImages=2))
        protocol.dataReceived(hello() + wholeImage(1, "a.img", b"a") + wholeImage(2, "b.img", b"b"))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(imageOpen(3, "c.img"))
        self.assertTrue(transport.disconnecting)
        session = protocol.state.session
        assert session is not None
        self.assertEqual(session.state, SessionState.FAILED)
        self.assertIn("--max-images", session.failure or "")

    def test_maxSessionBytes(self) -> None:
        """
        A chunk that would take the session past C{maxSessionBytes} fails
        it before its bytes are received.
        """
        protocol, transport = self.connect(Limits(maxSessionBytes=10))
        protocol.dataReceived(hello() + imageOpen(1, "a.img") + chunk(1, b"x" * 10) + imageClose(1, b"x" * 10))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(imageOpen(2, "b.img") + chunk(2, b"y")[:12])
        self.assertTrue(transport.disconnecting)
        session = protocol.state.session
        assert session is not None
        self.assertIn("--max-session-bytes", session.failure or "")


class HeaderAndNameLimitTests(SynchronousTestCase):
    """
    The longest header and image name taken are limits too, on the link
    and on CRIU's sockets.
    """

    def test_linkHeader(self) -> None:
        """
        A hello longer than C{maxHeaderSize} is refused before it is
        buffered, naming the limit.
        """
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds, limits=Limits(maxHeaderSize=64))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(hello("x" * 100)[:8])
        self.assertTrue(transport.disconnecting)
        answer = CacheMessage.FromString(transport.value()[4:])
        self.assertIn("at most 64 accepted", answer.refuse.reason)

    def test_linkSessionHeader(self) -> None:
        """
        The limit holds for the session's messages after the hello too.
        """
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds, limits=Limits(maxHeaderSize=64))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(hello())
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(imageOpen(1, "a" * 100))
        self.assertTrue(transport.disconnecting)
        session = protocol.state.session
        assert session is not None
        self.assertIn("at most 64 accepted", session.failure or "")

    def test_linkImageName(self) -> None:
        """
        An image name over C{maxNameLength} bytes fails the session.
        """
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds, limits=Limits(maxNameLength=10))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(hello() + wholeImage(1, "ten-bytes!", b"a"))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(imageOpen(2, "eleven-byte"))
        self.assertTrue(transport.disconnecting)
        session = protocol.state.session
        assert session is not None
        self.assertIn("is over 10 bytes", session.failure or "")

    def test_restoreRequest(self) -> None:
        """
        On the restore socket, a request header over the factory's limit
        or a name over its length ends that restore's connection only.
        """
        for limits, name in [(Limits(maxHeaderSize=20), "a" * 30 + ".img"), (Limits(maxNameLength=8), "long-name.img")]:
            factory = StreamServeFactory(SessionSlot(), MemoryReactorClock(), limits)
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(criu.frame(StreamRequest(filename=name)))
            self.assertTrue(transport.disconnecting, limits)
            protocol.connectionLost()

    def test_proxyImageName(self) -> None:
        """
        The proxy takes no image name from CRIU over its limit.
        """
        session = ProxySession("s", maxNameLength=8)
        session.accepted(ProxyLinkFactory(session).stream)
        self.assertRaises(BadName, session.openImage, "", "long-name.img")
        session.openImage("", "core.img")


class LocalConnectionLimitTests(SynchronousTestCase):
    """
    A local socket serves at most so many connections at once.
    """

    def test_limit(self) -> None:
        """
        Past the limit a new connection gets no protocol (it is closed at
        once); once one closes, another is served.
        """
        factory = StreamServeFactory(SessionSlot(), MemoryReactorClock(), Limits(maxLocalConnections=1))
        first = factory.buildProtocol(None)
        self.assertIsNotNone(first)
        first.makeConnection(StringTransport())
        self.assertIsNone(factory.buildProtocol(None))
        first.connectionLost()
        self.assertIsNotNone(factory.buildProtocol(None))


class LimitOptionsTests(SynchronousTestCase):
    """
    The limits are options of the daemons.
    """

    def test_options(self) -> None:
        """
        Defaults are those of L{Limits}; values must be positive.
        """
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        options = CacheOptions()
        options.parseOptions(["-D", d, "--listen", "tcp:0"])
        defaults = Limits()
        self.assertEqual(
            (options["max-images"], options["max-session-bytes"], options["max-local-connections"]),
            (defaults.maxImages, defaults.maxSessionBytes, defaults.maxLocalConnections),
        )
        options = CacheOptions()
        options.parseOptions(["-D", d, "--listen", "tcp:0", "--max-images", "5", "--max-local-connections", "3"])
        self.assertEqual((options["max-images"], options["max-local-connections"]), (5, 3))
        self.assertRaises(UsageError, CacheOptions().parseOptions, ["-D", d, "--listen", "tcp:0", "--max-images", "0"])

    def test_headerAndName(self) -> None:
        """
        The header size and name length options, on both daemons, reach
        their limits.
        """
        d = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, d)
        for options, args in [(CacheOptions(), ["--listen", "tcp:0"]), (ProxyOptions(), ["--connect", "tcp:host=h:port=1"])]:
            options.parseOptions(["-D", d, *args, "--max-header-size", "4096", "--max-name-length", "100"])
            limits = options.limits()
            self.assertEqual((limits.maxHeaderSize, limits.maxNameLength), (4096, 100))
