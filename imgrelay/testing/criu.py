# -*- test-case-name: tests.scenarios.test_stream,tests.cache.test_fetchserve -*-
"""
A CRIU-like client for C{criu dump --stream} and C{criu restore --stream},
blocking and independent of imgrelay's own code: it builds every byte from
the wire spec (a little-endian u32 length, a proto2 message, and one 0x00
byte with each passed pipe), so that it can check imgrelay from outside.

It runs in a thread or another process, never on a reactor.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
from typing import Iterable, Optional

from imgrelay.wire.pb.criu_pb2 import LocalImageHeader, LocalReply, SnapshotIdRecord, StreamReply, StreamRequest

#: How much the client writes or reads at once.
BLOCK = 1 << 20

#: The image a CRIU dump writes last, and only when it succeeded.
INVENTORY = "inventory.img"

#: What L{StreamDumper.finish} sends as C{inventory.img} by default.
INVENTORY_CONTENT = b"imgrelay test inventory"


def frame(message: object) -> bytes:
    """
    @return: C{message} behind CRIU's little-endian length.
    """
    body: bytes = message.SerializeToString()  # type: ignore[attr-defined]
    return struct.pack("<I", len(body)) + body


def passFd(sock: socket.socket, fd: int) -> None:
    """
    Pass C{fd} as CRIU does: SCM_RIGHTS with one 0x00 byte.
    """
    socket.send_fds(sock, [b"\x00"], [fd])


def recvExactly(sock: socket.socket, n: int) -> bytes:
    """
    Receive exactly C{n} bytes.

    @raise ConnectionError: If the socket closes first.
    """
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise ConnectionError(f"socket closed after {len(data)} of {n} bytes")
        data += more
    return data


def writeAll(fd: int, data: bytes | memoryview) -> None:
    """
    Write everything to a blocking descriptor.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:BLOCK]) :]


def readAll(fd: int) -> bytes:
    """
    Read a blocking descriptor to its end.
    """
    pieces: list[bytes] = []
    while True:
        data = os.read(fd, BLOCK)
        if not data:
            return b"".join(pieces)
        pieces.append(data)


#: How long the client waits for any answer before it gives up, so that a
#: test of a broken daemon fails instead of hanging.
TIMEOUT = 60.0


def connect(path: str, timeout: Optional[float] = TIMEOUT) -> socket.socket:
    """
    Connect to a UNIX socket, as CRIU does.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


class StreamDumper:
    """
    The C{criu dump --stream} side: names images, passes pipes, writes.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: The proxy's C{streamer-capture.sock}.
        """
        self.sock = connect(path)

    def open(self, name: str) -> int:
        """
        Ask for an image and pass its pipe.

        @return: The pipe's write end, for L{writeAll} and C{os.close}.
        """
        r, w = os.pipe()
        self.sock.sendall(frame(StreamRequest(filename=name)))
        passFd(self.sock, r)
        os.close(r)
        return w

    def send(self, name: str, data: bytes | memoryview) -> None:
        """
        Send one whole image.
        """
        w = self.open(name)
        try:
            writeAll(w, data)
        finally:
            os.close(w)

    def finish(self, inventory: bytes = INVENTORY_CONTENT) -> None:
        """
        End the dump as one that succeeded: send C{inventory.img}, which
        CRIU writes last and only then, and close the socket.
        """
        self.send(INVENTORY, inventory)
        self.close()

    def close(self) -> None:
        """
        Close the socket: with no C{inventory.img} sent, the end of a dump
        that failed.
        """
        self.sock.close()


class StreamRestorer:
    """
    The C{criu restore --stream} side: asks for images, passes pipes,
    reads them while it goes on asking.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: The cache's C{streamer-serve.sock}.
        """
        self.sock = connect(path)

    def request(self, name: str) -> Optional[int]:
        """
        Ask for an image.

        @return: The read end of its pipe, or None if it does not exist.
        """
        self.sock.sendall(frame(StreamRequest(filename=name)))
        (length,) = struct.unpack("<I", recvExactly(self.sock, 4))
        reply = StreamReply.FromString(recvExactly(self.sock, length))
        if not reply.exists:
            return None
        r, w = os.pipe()
        passFd(self.sock, w)
        os.close(w)
        return r

    def fetch(self, name: str) -> Optional[bytes]:
        """
        Ask for one image and read it whole before going on.
        """
        r = self.request(name)
        if r is None:
            return None
        try:
            return readAll(r)
        finally:
            os.close(r)

    def fetchAll(self, names: Iterable[str]) -> dict[str, Optional[bytes]]:
        """
        Ask for each image in turn, as CRIU does: the next request goes out
        before the earlier pipes are read to their end, and every pipe is
        read as data comes.

        @return: Each name's content, or None where it does not exist.
        """
        result: dict[str, Optional[bytes]] = {}
        pieces: dict[int, list[bytes]] = {}
        owner: dict[int, str] = {}
        sel = selectors.DefaultSelector()

        def drain(timeout: Optional[float]) -> None:
            for key, _ in sel.select(timeout):
                fd = key.fd
                data = os.read(fd, BLOCK)
                if data:
                    pieces[fd].append(data)
                else:
                    sel.unregister(fd)
                    os.close(fd)
                    result[owner.pop(fd)] = b"".join(pieces.pop(fd))

        for name in names:
            r = self.request(name)
            if r is None:
                result[name] = None
                continue
            pieces[r] = []
            owner[r] = name
            sel.register(r, selectors.EVENT_READ)
            drain(0)
        while owner:
            before = len(owner), sum(map(len, pieces.values()))
            drain(TIMEOUT)
            if (len(owner), sum(map(len, pieces.values()))) == before:
                raise TimeoutError(f"no data for {TIMEOUT} s on the pipes of {sorted(owner.values())}")
        sel.close()
        return result

    def close(self) -> None:
        """
        End the restore: close the socket.
        """
        self.sock.close()


O_RDONLY, O_WRONLY, O_APPEND = 0, 1, 1024
ENOENT = 2


def _recvFrame(sock: socket.socket) -> Optional[bytes]:
    head = b""
    while len(head) < 4:
        more = sock.recv(4 - len(head))
        if not more:
            if head:
                raise ConnectionError("socket closed inside a length prefix")
            return None
        head += more
    (length,) = struct.unpack("<I", head)
    return recvExactly(sock, length)


class RemoteClient:
    """
    The C{criu dump|pre-dump|restore --remote} side: a new connection per
    image operation on C{img-proxy.sock} or C{img-cache.sock}.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: The daemon's socket.
        """
        self.path = path

    def _open(self, snapshotId: str, name: str, mode: int) -> socket.socket:
        sock = connect(self.path)
        sock.sendall(frame(LocalImageHeader(name=name, snapshot_id=snapshotId, open_mode=mode)))
        return sock

    def openWrite(self, snapshotId: str, name: str, append: bool = False) -> int:
        """
        Begin writing an image through a pipe (C{snapshotId} must not be
        empty); the socket is closed once the pipe is passed, as CRIU does.

        @return: The pipe's write end.
        """
        sock = self._open(snapshotId, name, O_APPEND if append else O_WRONLY)
        r, w = os.pipe()
        passFd(sock, r)
        os.close(r)
        sock.close()
        return w

    def write(self, snapshotId: str, name: str, data: bytes, append: bool = False) -> None:
        """
        Write a whole image: through a pipe when C{snapshotId} is not
        empty, on the socket itself when it is.
        """
        if snapshotId:
            w = self.openWrite(snapshotId, name, append)
            try:
                writeAll(w, data)
            finally:
                os.close(w)
            return
        sock = self._open(snapshotId, name, O_APPEND if append else O_WRONLY)
        sock.sendall(data)
        sock.close()

    def read(self, snapshotId: str, name: str) -> Optional[bytes]:
        """
        Read a whole image.

        @return: Its content, or None for ENOENT.
        """
        sock = self._open(snapshotId, name, O_RDONLY)
        try:
            body = _recvFrame(sock)
            if body is None:
                raise ConnectionError(f"no reply for {name}")
            error = LocalReply.FromString(body).error
            if error == ENOENT:
                return None
            if error:
                raise OSError(error, f"reading {name}")
            if not snapshotId:
                pieces: list[bytes] = []
                while True:
                    data = sock.recv(BLOCK)
                    if not data:
                        return b"".join(pieces)
                    pieces.append(data)
            r, w = os.pipe()
            passFd(sock, w)
            os.close(w)
        finally:
            sock.close()
        try:
            return readAll(r)
        finally:
            os.close(r)

    def pushParent(self, snapshotId: str) -> None:
        """
        Push a snapshot id onto the snapshot list.
        """
        sock = self._open("", "parent", O_APPEND)
        sock.sendall(frame(SnapshotIdRecord(snapshot_id=snapshotId)))
        sock.close()

    def readParents(self) -> Optional[list[str]]:
        """
        @return: The snapshot list, or None for ENOENT.
        """
        sock = self._open("", "parent", O_RDONLY)
        try:
            body = _recvFrame(sock)
            if body is None or LocalReply.FromString(body).error:
                return None
            ids: list[str] = []
            while True:
                record = _recvFrame(sock)
                if record is None:
                    return ids
                ids.append(SnapshotIdRecord.FromString(record).snapshot_id)
        finally:
            sock.close()

    def finish(self, mode: int) -> None:
        """
        Send FINISH: C{O_WRONLY} from a dump, C{O_RDONLY} from a restore.
        """
        sock = self._open("", "", mode)
        # The daemon closes without a reply.
        sock.recv(1)
        sock.close()
