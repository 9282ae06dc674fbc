# -*- test-case-name: tests.transport.test_keepalive -*-
"""
Noticing a link whose peer vanished (its host crashed or the network
dropped it, with no FIN or RST): TCP keepalive probes an idle link, and
TCP_USER_TIMEOUT bounds how long sent data may stay unacknowledged, so the
session fails in about a minute instead of hanging for hours.
"""

from __future__ import annotations

import socket
from typing import Any

from imgrelay.transport.tcpinfo import tcpSocket

#: Seconds of silence before the first probe, between probes, and probes
#: lost before the link is declared dead.
KEEPIDLE, KEEPINTVL, KEEPCNT = 30, 10, 3

#: Milliseconds sent data may stay unacknowledged.
USER_TIMEOUT = 60_000


def watchPeer(transport: Any) -> bool:
    """
    Turn keepalive and the user timeout on for a link's TCP socket.

    @param transport: The link's transport (plain TCP or TLS over TCP).
    @return: Whether it had a TCP socket to set them on.
    """
    handle = tcpSocket(transport)
    if handle is None:
        return False
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in [
        ("TCP_KEEPIDLE", KEEPIDLE),
        ("TCP_KEEPINTVL", KEEPINTVL),
        ("TCP_KEEPCNT", KEEPCNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT),
    ]:
        number = getattr(socket, option, None)
        if number is not None:
            handle.setsockopt(socket.IPPROTO_TCP, number, value)
    return True
