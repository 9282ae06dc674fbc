# -*- test-case-name: tests.e2e.test_faults -*-
"""
Faults at chosen points of a migration through the real daemons: a TCP
relay between imgrelay-proxy and imgrelay-cache that reads the link
protocol as it passes and acts at a chosen point of it (L{FaultRelay}),
and one faulted migration run end to end (L{migrate}), for the fault matrix
of L{tests.e2e.test_faults} and the soak (C{python -m benchmarks.soak}).
Blocking: run it from a thread or a plain script.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, Optional, Union

import attrs

from imgrelay.testing import criu, dumpclient
from imgrelay.testing.daemons import Daemon, freePort

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
    default: reset both sides) and relays the later connections as they
    are.

    @ivar struck: Set once the fault struck.
    """

    def __init__(self, target: int, point: str, strike: Optional[Callable[[], None]] = None) -> None:
        """
        @param target: The cache's port on 127.0.0.1.
        @param point: One of L{POINTS}.
        @param strike: What happens at the point, besides not forwarding
            what follows it; None to reset the link.
        """
        assert point in POINTS, point
        self.target = target
        self.point = point
        self.strike = strike
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
            try:
                server = socket.create_connection(("127.0.0.1", self.target), 5)
            except OSError:
                _reset(client)
                continue
            self._sockets += [client, server]
            relay = threading.Thread(target=self._relayOrReset, args=(client, server, first), daemon=True)
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
                        cut = True
                try:
                    if send:
                        other.sendall(send)
                except OSError:
                    pass
                if cut:
                    point = self._hit(client, server)
                    if point == "reset":
                        return
        for sock in (client, server):
            sock.close()

    def _hit(self, client: socket.socket, server: socket.socket) -> Optional[str]:
        """
        The point is reached: strike. With no strike given, reset the link
        (and say so); else, once the strike is done (a process killed), go
        on relaying as a network would, watching nothing more.
        """
        self.struck.set()
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


#: Who a fault kills: nobody (the link is reset), or one process.
VICTIMS = (None, "proxy", "cache", "dumper")

#: Every (point, victim) pair but the proxy killed before the cache had its
#: hello: the cache never heard of that migration, and goes on waiting for
#: one, as a server does.
CELLS = tuple(
    (point, victim)
    for point in POINTS
    for victim in VICTIMS
    if not (victim == "proxy" and point in ("before-hello", "mid-hello"))
)


@attrs.define
class Outcome:
    """
    How one faulted migration ended.

    @ivar point: Where the fault struck (one of L{POINTS}).
    @ivar victim: Who it killed (one of L{VICTIMS}).
    @ivar struck: Whether the link reached the point.
    @ivar proxy: The proxy's exit status; None if it had not exited
        within the bound.
    @ivar cache: The cache's, likewise.
    @ivar dumper: CRIU's dump's, likewise.
    @ivar restored: What the restore read (each image's content, None for
        an image answered as absent), the error that ended it, or None if
        it had not ended within the bound.
    @ivar logs: The proxy's and the cache's logs.
    @ivar seconds: How long the migration took, fault and all.
    """

    point: str
    victim: Optional[str]
    struck: bool = False
    proxy: Optional[int] = None
    cache: Optional[int] = None
    dumper: Optional[int] = None
    restored: Union[dict[str, Optional[bytes]], BaseException, None] = None
    logs: tuple[str, str] = ("", "")
    seconds: float = 0.0

    @property
    def hung(self) -> bool:
        """
        Whether a process or the restore had not ended within the bound.
        """
        return None in (self.proxy, self.cache, self.dumper) or self.restored is None

    @property
    def restoredWhole(self) -> bool:
        """
        Whether the restore read every image, byte for byte.
        """
        return self.restored == dumpclient.images()

    @property
    def complete(self) -> bool:
        """
        Whether the migration completed: the restore read every image byte
        for byte and the daemons exited 0.
        """
        return self.proxy == 0 and self.cache == 0 and self.restoredWhole

    def restoreSummary(self) -> str:
        """
        @return: What the restore read, in a line (never the bytes).
        """
        if self.restored is None:
            return "the restore did not end"
        if isinstance(self.restored, BaseException):
            return f"the restore failed: {self.restored!r}"
        images = dumpclient.images()
        absent = sorted(name for name, content in self.restored.items() if content is None)
        wrong = sorted(
            name for name, content in self.restored.items() if content is not None and content != images[name]
        )
        return f"{len(self.restored) - len(absent) - len(wrong)} whole, absent: {absent}, wrong: {wrong}"

    @property
    def wrongBytes(self) -> bool:
        """
        Whether the restore read an image that is not the one dumped (a
        short one counts) while the cache lived on: what must never happen.
        """
        if not isinstance(self.restored, dict) or self.victim == "cache":
            return False
        images = dumpclient.images()
        return any(content is not None and content != images[name] for name, content in self.restored.items())


def migrate(base: str, point: str, victim: Optional[str], bound: float = 60, giveUp: float = 3) -> Outcome:
    """
    Migrate L{dumpclient.images} through C{twistd imgrelay-proxy --oneshot}
    and C{twistd imgrelay-cache --oneshot}, joined by a L{FaultRelay} that
    strikes at C{point}: it resets the link, or kills C{victim} with
    SIGKILL. A restore reads every image meanwhile.

    @param base: An empty directory for the images directories and logs.
    @param giveUp: The daemons' C{--resume-timeout} and
        C{--reconnect-timeout}, in seconds.
    @param bound: Seconds each process may take to end.
    @return: How it ended. Nothing of it runs any more.
    """
    began = time.monotonic()
    dumpDir, restoreDir = os.path.join(base, "dump"), os.path.join(base, "restore")
    os.mkdir(dumpDir, 0o700)
    os.mkdir(restoreDir, 0o700)
    capture = os.path.join(dumpDir, "streamer-capture.sock")
    serve = os.path.join(restoreDir, "streamer-serve.sock")
    port = freePort()
    outcome = Outcome(point, victim)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    started = threading.Event()

    def strike() -> None:
        # The relay's thread may strike as soon as the dump connects: wait
        # until every process is known.
        started.wait(bound)
        process = processes.get(victim) if victim is not None else None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)

    relay = FaultRelay(port, point, strike if victim is not None else None)
    cache = Daemon(
        "imgrelay-cache",
        ["--listen", f"tcp:{port}:interface=127.0.0.1", "--images-dir", restoreDir, "--oneshot",
         "--resume-timeout", str(giveUp)],
        os.path.join(base, "cache.log"),
    )
    proxy = Daemon(
        "imgrelay-proxy",
        ["--connect", f"tcp:host=127.0.0.1:port={relay.port}", "--images-dir", dumpDir, "--oneshot",
         "--reconnect-timeout", str(giveUp)],
        os.path.join(base, "proxy.log"),
    )
    dumper: Optional[subprocess.Popen[bytes]] = None
    try:
        cache.waitFor(path=serve)
        proxy.waitFor(path=capture)

        def restore() -> None:
            try:
                restorer = criu.StreamRestorer(serve)
                outcome.restored = restorer.fetchAll(sorted(dumpclient.images()))
                restorer.close()
            except BaseException as e:
                outcome.restored = e

        restorer = threading.Thread(target=restore, daemon=True)
        restorer.start()
        dumper = subprocess.Popen(
            [sys.executable, "-m", "imgrelay.testing.dumpclient", capture],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        processes.update(proxy=proxy.process, cache=cache.process, dumper=dumper)
        started.set()
        deadline = time.monotonic() + bound

        def wait(process: subprocess.Popen[bytes]) -> Optional[int]:
            try:
                return process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return None

        outcome.dumper = wait(dumper)
        outcome.proxy = wait(proxy.process)
        outcome.cache = wait(cache.process)
        restorer.join(max(0.0, deadline - time.monotonic()))
        if restorer.is_alive():
            outcome.restored = None
    finally:
        outcome.struck = relay.struck.is_set()
        for daemon in (proxy, cache):
            if daemon.process.poll() is None:
                daemon.process.kill()
            daemon.stop()
        if dumper is not None and dumper.poll() is None:
            dumper.kill()
            dumper.wait()
        relay.stop()
        outcome.logs = (proxy.log(), cache.log())
        if relay.error is not None:
            raise RuntimeError("the fault relay failed") from relay.error
        outcome.seconds = time.monotonic() - began
    return outcome
