"""
Tests for L{imgrelay.proxy.service}: the proxy's default session name,
and how it stops.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from imgrelay.config import ProxyConfig
from imgrelay.core.errors import SessionError
from imgrelay.proxy.service import CLOSE_GRACE, ProxyService

from imgrelay.core.names import checkSessionDirName
from imgrelay.core.names import defaultSessionName


class DefaultSessionNameTests(SynchronousTestCase):
    """
    L{defaultSessionName} is C{HOST-DIRNAME-HASH}, a safe directory name on
    the cache, distinct per host and images directory.
    """

    def test_shape(self) -> None:
        """
        The host, the directory's last component and the first 8 hex digits
        of the SHA-256 of its absolute path.
        """
        digest = hashlib.sha256(b"/run/dump").hexdigest()[:8]
        self.assertEqual(defaultSessionName("/run/dump", "host-a"), f"host-a-dump-{digest}")

    def test_thisHost(self) -> None:
        """
        By default the host is this one's, and a relative directory is made
        absolute first.
        """
        here = os.path.abspath("d")
        self.assertEqual(defaultSessionName("d"), defaultSessionName(here, socket.gethostname()))

    def test_distinct(self) -> None:
        """
        Directories with the same last component, or two hosts, give
        different names.
        """
        self.assertNotEqual(defaultSessionName("/a/dump", "h"), defaultSessionName("/b/dump", "h"))
        self.assertNotEqual(defaultSessionName("/a/dump", "h1"), defaultSessionName("/a/dump", "h2"))

    def test_safe(self) -> None:
        """
        Awkward hosts and directories (the root, spaces, a leading dot,
        very long names) still give a name the cache accepts as a directory.
        """
        for host, path in [
            ("h", "/"),
            (".hidden-host", "/run/.dump"),
            ("h", "/run/dump dir/with:odd*chars"),
            ("x" * 300, "/" + "y" * 250),
            ("h\u00e9", "/run/d\u00e9p\u00f4t"),
        ]:
            name = defaultSessionName(path, host)
            self.assertEqual(checkSessionDirName(name), name)
            self.assertRegex(name, r"^[A-Za-z0-9_][A-Za-z0-9._-]*-[0-9a-f]{8}$")
        self.assertTrue(defaultSessionName("/", "h").startswith("h-root-"))


class _ClosingTransport(StringTransport):
    """
    A transport whose abort ends the connection, as a socket's does.
    """

    def abortConnection(self) -> None:
        super().abortConnection()
        self.protocol.connectionLost(Failure(ConnectionAborted()))


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """
    Connects each protocol to a L{_ClosingTransport}.
    """

    def __init__(self) -> None:
        self.transports: list[_ClosingTransport] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(None)
        transport = _ClosingTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return succeed(protocol)


class StopServiceTests(SynchronousTestCase):
    """
    A stopping proxy waits for its links to close, for a while.
    """

    def test_waitsThenDrops(self) -> None:
        """
        C{stopService} fires once every link closed; a link still closing
        after L{CLOSE_GRACE} seconds is dropped then.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-proxy-stop-")
        self.addCleanup(shutil.rmtree, base)
        reactor = MemoryReactorClock()
        endpoint = _Endpoint()
        service = ProxyService(ProxyConfig(imagesDir=base, connect=endpoint, sessionName="s"), reactor)
        service.startService()
        session = service.newSession()
        [transport] = endpoint.transports
        self.assertTrue(transport.value())  # the hello
        session.abort("test over")
        self.failureResultOf(session.result, SessionError)
        self.failureResultOf(session.ready, SessionError)
        stopped = service.stopService()
        self.assertNoResult(stopped)
        reactor.advance(CLOSE_GRACE - 0.1)
        self.assertNoResult(stopped)
        reactor.advance(0.1)
        self.assertTrue(transport.disconnected or transport.disconnecting)
        self.successResultOf(stopped)
