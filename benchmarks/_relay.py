"""
The baseline: a plain-socket Python copy chain with no framework, for the
same bytes as imgrelay moves.

  writer -> pipe -> relay A -> loopback TCP -> relay B (memory) -> pipe -> reader

- C{python -m benchmarks._relay a --local PATH --port P}: takes each
  image's pipe from the writer (a SEQPACKET message: the name, the pipe's
  read end attached), raises the pipe to 1 MiB, reads every open pipe as
  data comes, 1 MiB at a time into one reused buffer, and sends each piece
  on one TCP connection behind a 9-byte header (kind, image id, length) with
  one C{sendmsg}. When the writer is gone and every pipe ended it sends
  DONE and exits once B acknowledged it (everything is in B's memory).
- C{python -m benchmarks._relay b --local PATH --port P [--store S]}:
  receives each piece with C{recv_into} straight into memory and keeps
  everything (the images stay in memory, as in a cache). With C{--store
  populate} (the default) the memory is 8 MiB anonymous maps made with
  C{MAP_POPULATE}, filled one after the other (the kernel faults each map
  in at once: about 2x the speed of faulting 4 KiB pages on first touch);
  with C{--store bytearray}, a new C{bytearray} per piece, the naive way.
  A restore request (the name, a
  pipe's write end attached) is answered as soon as the image has started
  arriving (streaming: the reader's pipe is written as pieces arrive), or
  at once from memory, or "no" once DONE came without it. Exits when the
  dump is done, the reader gone and every pipe written.

No checksums, no framing library, no reactor: a selector loop each.
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import selectors
import socket
import struct
import sys
from typing import Optional

BLOCK = 1 << 20
HEADER = struct.Struct("!BII")
NEW, DATA, END, DONE = 1, 2, 3, 4
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _preparePipe(fd: int) -> None:
    os.set_blocking(fd, False)
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, BLOCK)
    except OSError:
        pass


def _sendAll(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    total = sum(len(p) for p in parts)
    sent = sock.sendmsg(parts)
    if sent < total:  # only if a signal interrupted the blocking send
        sock.sendall(b"".join(parts)[sent:])


def _recvInto(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("link closed in the middle of a message")
        got += n


def _listenLocal(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(path)
    s.listen(4)
    return s


def relayA(local: str, port: int) -> int:
    """
    The dump side. See the module docstring.

    @return: The exit status.
    """
    listener = _listenLocal(local)
    link = socket.create_connection(("127.0.0.1", port))
    link.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    writer: Optional[socket.socket] = None
    writerGone = False
    ids: dict[int, int] = {}
    nextId = 0
    while not (writerGone and not ids):
        for key, _ in sel.select():
            if key.fileobj is listener:
                writer, _ = listener.accept()
                sel.unregister(listener)
                sel.register(writer, selectors.EVENT_READ)
            elif key.fileobj is writer:
                msg, fds, _, _ = socket.recv_fds(writer, 4096, 1)
                if not msg:
                    sel.unregister(writer)
                    writer.close()
                    writerGone = True
                    continue
                fd = fds[0]
                _preparePipe(fd)
                ids[fd] = nextId
                link.sendall(HEADER.pack(NEW, nextId, len(msg)) + msg)
                nextId += 1
                sel.register(fd, selectors.EVENT_READ)
            else:
                fd = key.fd
                try:
                    n = os.readv(fd, [buf])
                except BlockingIOError:
                    continue
                if n == 0:
                    sel.unregister(fd)
                    os.close(fd)
                    link.sendall(HEADER.pack(END, ids.pop(fd), 0))
                else:
                    _sendAll(link, [HEADER.pack(DATA, ids[fd], n), view[:n]])
    link.sendall(HEADER.pack(DONE, 0, 0))
    ack = link.recv(1)
    link.close()
    listener.close()
    return 0 if ack == b"\x01" else 1


#: The populated store's map size.
ARENA_BLOCK = 8 << 20


class _Arena:
    """Memory for pieces: 8 MiB populated maps, used front to back."""

    def __init__(self, populate: bool) -> None:
        self._populate = populate
        self._block: Optional[memoryview] = None
        self._used = 0

    def take(self, n: int) -> memoryview:
        """@return: C{n} bytes of fresh memory (n <= BLOCK)."""
        if not self._populate:
            return memoryview(bytearray(n))
        if self._block is None or self._used + n > len(self._block):
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0x8000)
            self._block = memoryview(mmap.mmap(-1, ARENA_BLOCK, flags=flags))
            self._used = 0
        view = self._block[self._used : self._used + n]
        self._used += n
        return view


class _Image:
    __slots__ = ("name", "pieces", "complete", "outputs")

    def __init__(self, name: str) -> None:
        self.name = name
        self.pieces: list[memoryview] = []
        self.complete = False
        self.outputs: list[int] = []


class _Output:
    __slots__ = ("image", "piece", "offset", "armed")

    def __init__(self, image: _Image) -> None:
        self.image = image
        self.piece = 0
        self.offset = 0
        self.armed = False


def relayB(local: str, port: int, populate: bool = True) -> int:
    """
    The restore side, holding everything in memory. See the module docstring.

    @return: The exit status.
    """
    linkListener = socket.create_server(("127.0.0.1", port))
    serveListener = _listenLocal(local)
    sel = selectors.DefaultSelector()
    sel.register(linkListener, selectors.EVENT_READ)
    sel.register(serveListener, selectors.EVENT_READ)
    link: Optional[socket.socket] = None
    restore: Optional[socket.socket] = None
    images: dict[int, _Image] = {}
    byName: dict[str, _Image] = {}
    outputs: dict[int, _Output] = {}
    pending: Optional[tuple[str, int]] = None
    done = restoreGone = False
    header = bytearray(HEADER.size)
    arena = _Arena(populate)

    def arm(fd: int) -> None:
        out = outputs[fd]
        if not out.armed:
            out.armed = True
            sel.register(fd, selectors.EVENT_WRITE)

    def answer(name: str, fd: int) -> None:
        assert restore is not None
        image = byName.get(name)
        if image is None:
            os.close(fd)
            restore.send(b"\x00")
        else:
            restore.send(b"\x01")
            _preparePipe(fd)
            outputs[fd] = _Output(image)
            image.outputs.append(fd)
            arm(fd)
        if not restoreGone:
            sel.register(restore, selectors.EVENT_READ)

    while not (done and restoreGone and not outputs):
        for key, _ in sel.select():
            obj = key.fileobj
            if obj is linkListener:
                link, _ = linkListener.accept()
                sel.register(link, selectors.EVENT_READ)
            elif obj is serveListener:
                restore, _ = serveListener.accept()
                sel.register(restore, selectors.EVENT_READ)
            elif obj is link:
                hv = memoryview(header)
                try:
                    _recvInto(link, hv)
                except ConnectionError:
                    sel.unregister(link)
                    continue
                kind, imageId, length = HEADER.unpack(header)
                if kind == NEW:
                    raw = bytearray(length)
                    _recvInto(link, memoryview(raw))
                    image = images[imageId] = byName[raw.decode()] = _Image(raw.decode())
                    if pending is not None and pending[0] == image.name:
                        (n, fd), pending = pending, None
                        answer(n, fd)
                elif kind == DATA:
                    piece = arena.take(length)
                    _recvInto(link, piece)
                    image = images[imageId]
                    image.pieces.append(piece)
                    for fd in image.outputs:
                        arm(fd)
                elif kind == END:
                    image = images[imageId]
                    image.complete = True
                    for fd in image.outputs:
                        arm(fd)
                elif kind == DONE:
                    done = True
                    link.sendall(b"\x01")
                    if pending is not None:
                        (n, fd), pending = pending, None
                        answer(n, fd)
            elif obj is restore:
                msg, fds, _, _ = socket.recv_fds(restore, 4096, 1)
                sel.unregister(restore)
                if not msg:
                    restoreGone = True
                    continue
                name = msg.decode()
                if name in byName or done:
                    answer(name, fds[0])
                else:
                    pending = (name, fds[0])
            else:
                fd = key.fd
                out = outputs[fd]
                image = out.image
                while out.piece < len(image.pieces):
                    piece = image.pieces[out.piece]
                    try:
                        out.offset += os.write(fd, piece[out.offset :])
                    except BlockingIOError:
                        break
                    if out.offset == len(piece):
                        out.piece += 1
                        out.offset = 0
                    else:
                        break
                else:
                    sel.unregister(fd)
                    out.armed = False
                    if image.complete:
                        os.close(fd)
                        image.outputs.remove(fd)
                        del outputs[fd]
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Run relay A or B."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["a", "b"])
    parser.add_argument("--local", required=True, help="the SEQPACKET socket for the writer (a) or reader (b)")
    parser.add_argument("--port", type=int, required=True, help="the link's TCP port on 127.0.0.1")
    parser.add_argument("--store", choices=["populate", "bytearray"], default="populate", help="(b) how memory is taken")
    args = parser.parse_args(argv)
    if args.role == "a":
        return relayA(args.local, args.port)
    return relayB(args.local, args.port, args.store == "populate")


if __name__ == "__main__":
    sys.exit(main())
