"""
Tests for L{imgrelay.transport.keepalive}.
"""

from __future__ import annotations

import socket

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.transport.keepalive import KEEPCNT, KEEPIDLE, KEEPINTVL, USER_TIMEOUT, watchPeer


class _Handle:
    def __init__(self, handle: object) -> None:
        self.handle = handle

    def getHandle(self) -> object:
        return self.handle


class WatchPeerTests(SynchronousTestCase):
    """
    L{watchPeer} sets keepalive and the user timeout on TCP links only.
    """

    def test_tcp(self) -> None:
        """
        A TCP socket gets keepalive probes after 30 s of silence and a
        60 s bound on unacknowledged data.
        """
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        self.addCleanup(server.close)
        client = socket.create_connection(server.getsockname())
        self.addCleanup(client.close)
        self.assertTrue(watchPeer(_Handle(client)))
        self.assertEqual(client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), KEEPIDLE)
        self.assertEqual(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), KEEPINTVL)
        self.assertEqual(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), KEEPCNT)
        self.assertEqual(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), USER_TIMEOUT)

    def test_notTCP(self) -> None:
        """
        A UNIX socket, or a transport without a socket, is left alone.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertFalse(watchPeer(_Handle(a)))
        self.assertFalse(watchPeer(StringTransport()))

    def test_tls(self) -> None:
        """
        A TLS link's transport hands out its TLS connection; the TCP socket
        under it gets keepalive all the same.
        """
        from twisted.internet.protocol import Factory, Protocol
        from twisted.internet.ssl import optionsForClientTLS
        from twisted.protocols.tls import TLSMemoryBIOFactory

        server = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(server.close)
        client = socket.create_connection(server.getsockname())
        self.addCleanup(client.close)

        class SocketTransport(StringTransport):
            def getHandle(self) -> socket.socket:
                return client

        factory = TLSMemoryBIOFactory(optionsForClientTLS("cache.invalid"), True, Factory.forProtocol(Protocol))
        tls = factory.buildProtocol(None)
        tls.makeConnection(SocketTransport())
        self.assertNotIsInstance(tls.getHandle(), socket.socket)
        self.assertTrue(watchPeer(tls))
        self.assertEqual(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), USER_TIMEOUT)
