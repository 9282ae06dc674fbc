"""
Tests for L{imgrelay.transport.tcpinfo}: reading the kernel's measure of a
connection's delivery, and finding the TCP socket under a transport.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.transport.tcpinfo import Delivery, delivery, parse, tcpSocket


def _info(rate: int, appLimited: bool, rwnd: int, length: int = 232) -> bytes:
    info = bytearray(232)
    info[7] = 0b110 | int(appLimited)  # fastopen_client_fail bits set: ignored
    struct.pack_into("<Q", info, 160, rate)
    struct.pack_into("<Q", info, 168, 99)  # busy time
    struct.pack_into("<Q", info, 176, rwnd)
    return bytes(info[:length])


class ParseTests(SynchronousTestCase):
    """
    C{struct tcp_info} as Linux lays it out.
    """

    def test_fields(self) -> None:
        self.assertEqual(parse(_info(119_500_000, False, 0)), Delivery(119.5e6, False, 0))
        self.assertEqual(parse(_info(40_000_000, True, 1234)), Delivery(40e6, True, 1234))

    def test_tooShort(self) -> None:
        """
        A kernel before 4.10 answers a shorter structure: nothing to read.
        """
        self.assertIsNone(parse(_info(119_500_000, False, 0, length=176)))

    def test_noRateYet(self) -> None:
        """
        A connection with nothing delivered yet has no rate.
        """
        self.assertIsNone(parse(_info(0, False, 0)))


class _Handle:
    def __init__(self, handle: Any, transport: Any = None) -> None:
        self._handle = handle
        if transport is not None:
            self.transport = transport

    def getHandle(self) -> Any:
        return self._handle


class SocketTests(SynchronousTestCase):
    """
    Real sockets on 127.0.0.1.
    """

    def setUp(self) -> None:
        server = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(server.close)
        self.client = socket.create_connection(server.getsockname())
        self.addCleanup(self.client.close)
        self.server, _ = server.accept()
        self.addCleanup(self.server.close)

    def test_delivery(self) -> None:
        """
        Once bytes were delivered and acknowledged, the kernel has a rate.
        """
        self.client.sendall(b"x" * 65536)
        got = 0
        while got < 65536:
            got += len(self.server.recv(65536))
        self.server.sendall(b"y")
        self.client.recv(1)
        reading = delivery(self.client)
        if reading is None:
            raise self.skipTest("this kernel gives no delivery rate in TCP_INFO")
        self.assertGreater(reading.rate, 0)

    def test_closed(self) -> None:
        """
        A closed socket has no reading.
        """
        self.client.close()
        self.assertIsNone(delivery(self.client))

    def test_plainAndTLS(self) -> None:
        """
        The socket is the transport's handle, or (TLS) its transport's.
        """
        self.assertIs(tcpSocket(_Handle(self.client)), self.client)
        self.assertIs(tcpSocket(_Handle(object(), _Handle(self.client))), self.client)

    def test_notTCP(self) -> None:
        """
        A UNIX socket, a transport without a handle, or none: no socket.
        """
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertIsNone(tcpSocket(_Handle(a)))
        self.assertIsNone(tcpSocket(object()))
        self.assertIsNone(tcpSocket(_Handle(object(), object())))
