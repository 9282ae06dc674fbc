# -*- test-case-name: tests.e2e.test_faults -*-
"""
A TCP relay between imgrelay-proxy and imgrelay-cache that reads the link
protocol as it passes and, at a chosen point of it, resets the link, holds
it silently dead, or has a process killed (L{FaultRelay}). Blocking: it
runs in threads of its own. L{imgrelay.testing.faults} runs migrations
through it.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Callable, Optional



from imgrelay.wire.framing import HeaderReceived
from imgrelay.wire.link import cacheMessageFramer, proxyMessageFramer

#: Where in the link a fault strikes, on the first link only.
POINTS = (
    "before-hello",  # the proxy connected; nothing forwarded yet
    "mid-hello",  # three bytes of the hello forwarded
    "mid-chunk",  # a chunk's payload forwarded in part, past 4 MiB of the session
    "before-ack",  # an image's close forwarded; the cache's acknowledgement is not
    "final-handshake",  # the proxy's done forwarded; the cache's answer is not
    "after-confirmation",  # the cache's final answer forwarded
    "after-verdict",  # on a verdict link (imgrelay migrate), the cache's verdict forwarded
)

#: How far into the proxy's stream "mid-chunk" strikes.
MID_CHUNK_AFTER = 4 << 20


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultRelay:
    """
    Relays every connection to the cache, each in both directions; on the
    first connection, when the link reaches C{point}, calls C{strike} (by
    default: reset both sides; with C{blackhole}, forward nothing more
    either way and close nothing, as a dead network or a relay whose far
    side vanished does; with C{halfOpen}, close the proxy's side only) and
    relays the later connections as they are.

    @ivar struck: Set once the fault struck.
    """

    def __init__(
        self, target: int, point: str, strike: Optional[Callable[[], None]] = None, blackhole: bool = False,
        halfOpen: bool = False, forGood: bool = False,
    ) -> None:
        """
        @param target: The cache's port on 127.0.0.1.
        @param point: One of L{POINTS}.
        @param strike: What happens at the point, besides not forwarding
            what follows it; None to reset the link.
        @param blackhole: At the point, hold the link silently open
            instead (both its sockets stay open until L{stop}).
        @param halfOpen: At the point, close the proxy's side only: the
            cache's stays open until L{stop}, never told, as behind a
            middlebox that lost one side of a connection.
        @param forGood: Once the fault struck, reset every later
            connection as it comes: the network stays down.
        """
        assert point in POINTS, point
        self.target = target
        self.point = point
        self.strike = strike
        self.blackhole = blackhole
        self.halfOpen = halfOpen
        self.forGood = forGood
        self._down = threading.Event()
        self.struck = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        first = True
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.forGood and (self.struck.is_set() or self._down.is_set()):
                _reset(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), 5)
            except OSError:
                _reset(client)
                continue
            self._sockets += [client, server]
            # A verdict link is a later connection of its own.
            watched = first or self.point == "after-verdict"
            relay = threading.Thread(target=self._relayOrReset, args=(client, server, watched), daemon=True)
            first = False
            relay.start()
            self._threads.append(relay)

    def _relayOrReset(self, client: socket.socket, server: socket.socket, watched: bool) -> None:
        try:
            self._relay(client, server, watched)
        except BaseException as e:
            # A relay that dies must not leave a link hanging: say so, and
            # reset it.
            self.error = e
            _reset(client)
            _reset(server)
            raise

    #: What ended a relay thread, if one failed.
    error: Optional[BaseException] = None

    def _relay(self, client: socket.socket, server: socket.socket, watched: bool) -> None:
        up = proxyMessageFramer(1 << 20)
        down = cacheMessageFramer(1 << 20)
        forwardedUp = 0
        point = self.point if watched else None
        closeSeen = doneSeen = False
        if point == "before-hello":
            point = self._hit(client, server)
            if point == "reset":
                return
        peers = {client: server, server: client}
        reading = [client, server]
        while reading and not self._stop.is_set():
            try:
                readable, _, _ = select.select(reading, [], [], 0.1)
            except (OSError, ValueError):
                return
            for sock in readable:
                other = peers[sock]
                try:
                    data = sock.recv(1 << 18)
                except OSError:
                    # A reset: pass it on as one.
                    _reset(other)
                    sock.close()
                    return
                if not data:
                    reading.remove(sock)
                    try:
                        other.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                send, cut = data, False
                if point is not None and sock is client:
                    if point == "mid-hello":
                        send, cut = data[:3], True
                    else:
                        for e in up.feed(data):
                            if isinstance(e, HeaderReceived):
                                kind = e.message.WhichOneof("kind")
                                closeSeen = closeSeen or kind == "close"
                                doneSeen = doneSeen or kind == "done"
                        if point == "mid-chunk" and forwardedUp + len(data) > MID_CHUNK_AFTER and up.payloadRemaining:
                            cut = True
                    forwardedUp += len(send)
                elif point is not None and sock is server:
                    kinds = {e.message.WhichOneof("kind") for e in down.feed(data) if isinstance(e, HeaderReceived)}
                    if point == "before-ack" and closeSeen and "ack" in kinds:
                        send, cut = b"", True
                    elif point == "final-handshake" and doneSeen and kinds & {"done_ok", "failed"}:
                        send, cut = b"", True
                    elif point == "after-confirmation" and "done_ok" in kinds:
                        # A kill strikes before the answer goes on (then it
                        # does): forwarded first, a proxy quick enough could
                        # read it and exit before the kill.
                        send, cut = (b"", True) if self.strike is not None else (data, True)
                    elif point == "after-verdict" and "verdict" in kinds:
                        cut = True
                if cut and self.forGood:
                    # Down for new connections before the peer hears what
                    # it would dial again for.
                    self._down.set()
                try:
                    if send:
                        other.sendall(send)
                except OSError:
                    pass
                if cut:
                    point = self._hit(client, server)
                    if point == "reset":
                        return
                    # A kill is the fault; the network loses nothing: what
                    # was held at the point goes on.
                    try:
                        if len(send) < len(data):
                            other.sendall(data[len(send):])
                    except OSError:
                        pass
        for sock in (client, server):
            sock.close()

    def _hit(self, client: socket.socket, server: socket.socket) -> Optional[str]:
        """
        The point is reached: strike. With no strike given, reset the link
        (and say so); else, once the strike is done (a process killed), go
        on relaying as a network would, watching nothing more.
        """
        self.struck.set()
        if self.blackhole:
            # Read nothing more, send nothing more, close nothing.
            return "reset"
        if self.halfOpen:
            # The proxy sees its link end; the cache is never told.
            client.close()
            return "reset"
        if self.strike is None:
            _reset(client)
            _reset(server)
            return "reset"
        self.strike()
        return None

    def stop(self) -> None:
        """
        Stop relaying and close every socket.
        """
        self._stop.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
