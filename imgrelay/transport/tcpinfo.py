# -*- test-case-name: tests.transport.test_tcpinfo -*-
"""
What the kernel measures of a TCP connection's delivery (Linux's
C{TCP_INFO}, 4.9 and later): the rate at which its most recent bytes were
delivered, taken from the acknowledgements as they come, and whether the
sender or the receiver's window was what limited it then.

When neither did, the network path was the bottleneck, and the rate is
the link's: on a link shaped to 1 Gbit it read 119.5 MB/s within 10 ms of
the first bytes, and 1.15 to 1.2 GB/s on 10 Gbit. The cache's own
acknowledgements reach the proxy through the link's queue, and gave a
first measure only after 17 MiB.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Optional

import attrs

#: C{TCP_INFO}'s option number (Linux).
_TCP_INFO = getattr(socket, "TCP_INFO", 11)

#: Offsets in C{struct tcp_info}: the byte holding
#: C{tcpi_delivery_rate_app_limited} (its lowest bit),
#: C{tcpi_delivery_rate} and C{tcpi_rwnd_limited} (both C{__u64}).
_FLAGS, _DELIVERY_RATE, _RWND_LIMITED = 7, 160, 176

#: The shortest C{struct tcp_info} that has all three.
_LENGTH = _RWND_LIMITED + 8


@attrs.frozen
class Delivery:
    """
    One reading of a connection's delivery.

    @ivar rate: Bytes per second its most recent bytes were delivered at.
    @ivar appLimited: Whether the sender had too little to send then (the
        rate is then only a lower bound of the path's).
    @ivar rwndLimited: Microseconds the connection has spent limited by
        the receiver's window, so far.
    """

    rate: float
    appLimited: bool
    rwndLimited: int


def parse(info: bytes) -> Optional[Delivery]:
    """
    @param info: C{getsockopt(IPPROTO_TCP, TCP_INFO)}'s answer.
    @return: What it says of the delivery, or None if it is too short (a
        kernel before 4.10) or says nothing yet (no rate measured).
    """
    if len(info) < _LENGTH:
        return None
    (rate,) = struct.unpack_from("<Q", info, _DELIVERY_RATE)
    if not rate:
        return None
    (rwnd,) = struct.unpack_from("<Q", info, _RWND_LIMITED)
    return Delivery(float(rate), bool(info[_FLAGS] & 1), int(rwnd))


def delivery(sock: socket.socket) -> Optional[Delivery]:
    """
    @return: The kernel's reading of C{sock}'s delivery, or None where it
        has none (not Linux, an older kernel, a closed socket).
    """
    try:
        return parse(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256))
    except OSError:
        return None


def tcpSocket(transport: Any) -> Optional[socket.socket]:
    """
    @param transport: A connection's transport: plain TCP, or TLS over TCP
        (whose C{getHandle} is the TLS connection, and whose own transport
        has the socket).
    @return: The TCP socket under it, or None (a UNIX socket, a transport
        in memory).
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        try:
            handle = candidate.getHandle()  # type: ignore[union-attr]
        except Exception:
            continue
        if isinstance(handle, socket.socket) and handle.family in (socket.AF_INET, socket.AF_INET6):
            return handle
    return None
