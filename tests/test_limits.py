"""
Tests for L{imgrelay._limits}: each limit ends only the offending session
or connection, with a reason.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from imgrelay._cachelink import CacheLinkProtocol
from imgrelay._limits import Limits
from imgrelay._store import SessionSlot, SessionState
from imgrelay._streamserve import StreamServeFactory
from imgrelay.tap import CacheOptions
from tests.test_cachelink import chunk, hello, imageClose, imageOpen, wholeImage


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


class LocalConnectionLimitTests(SynchronousTestCase):
    """
    A local socket serves at most so many connections at once.
    """

    def test_limit(self) -> None:
        """
        Past the limit a new connection gets no protocol (it is closed at
        once); once one closes, another is served.
        """
        factory = StreamServeFactory(SessionSlot(), MemoryReactorClock())
        factory.connectionLimit = 1
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
