# -*- test-case-name: tests.transport.test_peer -*-
"""
Naming the far end of a connection in a log line.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ITransport


def peerOf(transport: Optional[ITransport]) -> str:
    """
    Name the peer of C{transport} for a log line.

    @param transport: A connection's transport, if it still has one.
    @return: C{host:port} for an IP peer, the address as text for any
        other, or C{"an unknown peer"} when the transport cannot tell.
    """
    if transport is None:
        return "an unknown peer"
    try:
        peer = transport.getPeer()
    except Exception:
        return "an unknown peer"
    if isinstance(peer, (IPv4Address, IPv6Address)):
        return f"{peer.host}:{peer.port}"
    return str(peer)
