"""
The CRIU-like writer (dump side) and reader (restore side), and the two
wire protocols they speak: CRIU's C{--stream} toward imgrelay, and the
baseline chain's minimal one. Both run in a forked process or a thread;
neither ever runs on a reactor.
"""

from __future__ import annotations

import os
import resource
import selectors
import socket
import struct
import time
from typing import Optional, Protocol

import attrs

from benchmarks._content import BLOCK, ImageSpec, Source, pieces
from benchmarks._scenarios import Close, Eof, Open, Step, Together, Write
from imgrelay.wire.pb.criu_pb2 import StreamReply, StreamRequest
from imgrelay.testing import criu

#: How long a reader or writer waits without progress before it fails.
STALL = 120.0

#: At most this many restore pipes open at once (CRIU reads a few at once).
MAX_OPEN = 16


class DumpClient(Protocol):
    """The dump side of a protocol: CRIU's C{dump --stream}."""

    def open(self, name: str) -> int:
        """@return: The write end of the image's pipe."""

    def close(self) -> None:
        """End the dump."""


class RestoreClient(Protocol):
    """The restore side of a protocol: CRIU's C{restore --stream}."""

    sock: socket.socket

    def ask(self, name: str) -> None:
        """Send a request for an image."""

    def answer(self) -> Optional[int]:
        """Read the reply to the request sent (the socket is readable).

        @return: The read end of the image's pipe, or None if it does not exist.
        """

    def close(self) -> None:
        """End the restore."""


class CriuDumper:
    """C{criu dump --stream} toward the proxy's C{streamer-capture.sock}."""

    def __init__(self, path: str) -> None:
        self._dumper = criu.StreamDumper(path)

    def open(self, name: str) -> int:
        """@return: The write end of the image's pipe, passed to the proxy."""
        return self._dumper.open(name)

    def close(self) -> None:
        """Close the socket: the dump ends."""
        self._dumper.close()


class CriuRestorer:
    """C{criu restore --stream} toward the cache's C{streamer-serve.sock}."""

    def __init__(self, path: str) -> None:
        self.sock = criu.connect(path, timeout=None)

    def ask(self, name: str) -> None:
        """Send a C{StreamRequest}."""
        self.sock.sendall(criu.frame(StreamRequest(filename=name)))

    def answer(self) -> Optional[int]:
        """Read the C{StreamReply}; pass a pipe's write end if it exists."""
        (length,) = struct.unpack("<I", criu.recvExactly(self.sock, 4))
        if not StreamReply.FromString(criu.recvExactly(self.sock, length)).exists:
            return None
        r, w = os.pipe()
        criu.passFd(self.sock, w)
        os.close(w)
        return r

    def close(self) -> None:
        """Close the socket: the restore ends."""
        self.sock.close()


class PlainDumper:
    """The baseline's dump side: a SEQPACKET message per image, its name
    with the pipe's read end attached."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path)

    def open(self, name: str) -> int:
        """@return: The write end of the image's pipe."""
        r, w = os.pipe()
        socket.send_fds(self.sock, [name.encode()], [r])
        os.close(r)
        return w

    def close(self) -> None:
        """Close the socket: the dump ends."""
        self.sock.close()


class PlainRestorer:
    """The baseline's restore side: a SEQPACKET message per request, the
    name with a pipe's write end attached; a one-byte reply (1: exists)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path)
        self._pending: Optional[int] = None

    def ask(self, name: str) -> None:
        """Send the name and the write end of a new pipe."""
        r, w = os.pipe()
        socket.send_fds(self.sock, [name.encode()], [w])
        os.close(w)
        self._pending = r

    def answer(self) -> Optional[int]:
        """@return: The pipe's read end if the image exists."""
        reply = self.sock.recv(1)
        r, self._pending = self._pending, None
        assert r is not None
        if reply == b"\x01":
            return r
        os.close(r)
        if reply != b"\x00":
            raise ConnectionError(f"baseline relay B replied {reply!r}")
        return None

    def close(self) -> None:
        """Close the socket: the restore ends."""
        self.sock.close()


@attrs.define
class ClientTimes:
    """
    What a writer or reader reports.

    @ivar start: C{time.monotonic()} at its first request (writer: the
        first byte it writes).
    @ivar end: When it finished (reader: the last pipe's EOF).
    @ivar cpu: Its own CPU seconds from start to end.
    @ivar received: (reader) each requested name's received length, -1 if
        it did not exist.
    @ivar error: What went wrong, if anything.
    """

    start: float = 0.0
    end: float = 0.0
    cpu: float = 0.0
    received: dict[str, int] = attrs.Factory(dict)
    error: Optional[str] = None


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _writeAll(fd: int, source: Source, spec: ImageSpec, lo: int, hi: int) -> None:
    for view in pieces(source, spec, lo, hi):
        while view:
            view = view[os.write(fd, view) :]


def _together(client: DumpClient, source: Source, specs: list[ImageSpec]) -> None:
    """Write several images at once: each pipe non-blocking, written as it has room."""
    sel = selectors.DefaultSelector()
    state: dict[int, tuple[ImageSpec, int]] = {}
    for spec in specs:
        w = client.open(spec.name)
        os.set_blocking(w, False)
        state[w] = (spec, 0)
        sel.register(w, selectors.EVENT_WRITE)
    while state:
        events = sel.select(STALL)
        if not events:
            raise TimeoutError(f"no pipe writable for {STALL} s")
        for key, _ in events:
            w = key.fd
            spec, pos = state[w]
            view = next(pieces(source, spec, pos, min(pos + BLOCK, spec.size)), memoryview(b""))
            try:
                pos += os.write(w, view) if view else 0
            except BlockingIOError:
                continue
            if pos >= spec.size:
                sel.unregister(w)
                os.close(w)
                del state[w]
            else:
                state[w] = (spec, pos)
    sel.close()


def runWriter(client: DumpClient, source: Source, images: dict[str, ImageSpec], steps: tuple[Step, ...], who: int) -> ClientTimes:
    """
    Play a dump.

    @param client: The protocol's dump side, connected.
    @param images: The scenario's images by name.
    @param steps: What to do, in order.
    @param who: C{RUSAGE_SELF} in a process, C{RUSAGE_THREAD} in a thread.
    """
    out = ClientTimes()
    pipes: dict[str, int] = {}
    cpu0 = _cpu(who)
    out.start = time.monotonic()
    try:
        for step in steps:
            if isinstance(step, Open):
                pipes[step.name] = client.open(step.name)
            elif isinstance(step, Write):
                _writeAll(pipes[step.name], source, images[step.name], step.lo, step.hi)
            elif isinstance(step, Close):
                os.close(pipes.pop(step.name))
            elif isinstance(step, Together):
                _together(client, source, [images[n] for n in step.names])
            elif isinstance(step, Eof):
                client.close()
    finally:
        for w in pipes.values():
            os.close(w)
    out.end = time.monotonic()
    out.cpu = _cpu(who) - cpu0
    return out


def runReader(
    client: RestoreClient,
    requests: tuple[tuple[str, bool], ...],
    places: dict[str, tuple[int, int]],
    buffer: memoryview,
    who: int,
    started: Optional[float] = None,
) -> ClientTimes:
    """
    Play a restore: one request at a time (the next goes out once the last
    is answered), every open pipe read as data comes, into C{buffer} at the
    image's place.

    @param client: The protocol's restore side, connected.
    @param requests: (name, exists) in order.
    @param places: Where each image goes in C{buffer}: (offset, size).
    @param who: C{RUSAGE_SELF} or C{RUSAGE_THREAD}.
    @param started: When the restore started, if before this call.
    """
    out = ClientTimes()
    cpu0 = _cpu(who)
    out.start = time.monotonic() if started is None else started
    sel = selectors.DefaultSelector()
    spare = bytearray(BLOCK)
    queue = list(reversed(requests))
    asked: Optional[str] = None
    pipes: dict[int, list] = {}  # fd -> [name, start, pos, end, extra]
    while queue or asked is not None or pipes:
        if asked is None and queue and len(pipes) < MAX_OPEN:
            asked = queue.pop()[0]
            client.ask(asked)
            sel.register(client.sock, selectors.EVENT_READ)
        events = sel.select(STALL)
        if not events:
            raise TimeoutError(f"restore: no progress for {STALL} s (asked {asked}, open {[p[0] for p in pipes.values()]})")
        for key, _ in events:
            fd = key.fd
            if fd == client.sock.fileno():
                sel.unregister(client.sock)
                assert asked is not None
                r = client.answer()
                if r is None:
                    out.received[asked] = -1
                else:
                    off, size = places.get(asked, (0, 0))
                    pipes[r] = [asked, off, off, off + size, 0]
                    sel.register(r, selectors.EVENT_READ)
                asked = None
                continue
            p = pipes[fd]
            room = p[3] - p[2]
            if room > 0:
                n = os.readv(fd, [buffer[p[2] : p[2] + min(room, BLOCK)]])
                p[2] += n
            else:
                n = os.readv(fd, [spare])
                p[4] += n
            if n == 0:
                sel.unregister(fd)
                os.close(fd)
                del pipes[fd]
                out.received[p[0]] = p[2] - p[1] + p[4]
    out.end = time.monotonic()
    out.cpu = _cpu(who) - cpu0
    sel.close()
    client.close()
    return out
