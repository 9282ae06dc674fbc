"""
Tests for L{imgrelay.transport.peer}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.transport.peer import peerOf


class _Broken(StringTransport):
    def getPeer(self) -> IPv4Address:
        raise OSError("not connected")


class PeerOfTests(SynchronousTestCase):
    """
    L{peerOf} names a connection's far end.
    """

    def test_ipv4(self) -> None:
        """
        An IPv4 peer is named C{host:port}.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4242))
        self.assertEqual(peerOf(transport), "10.1.2.3:4242")

    def test_ipv6(self) -> None:
        """
        An IPv6 peer is named C{host:port} too.
        """
        transport = StringTransport(peerAddress=IPv6Address("TCP", "::1", 4242))
        self.assertEqual(peerOf(transport), "::1:4242")

    def test_otherAddress(self) -> None:
        """
        Any other address is named by its text.
        """
        address = UNIXAddress(b"/run/imgrelay.sock")
        self.assertEqual(peerOf(StringTransport(peerAddress=address)), str(address))

    def test_unknown(self) -> None:
        """
        A transport that cannot tell its peer, or no transport at all, is an
        unknown peer.
        """
        self.assertEqual(peerOf(_Broken()), "an unknown peer")
        self.assertEqual(peerOf(None), "an unknown peer")
