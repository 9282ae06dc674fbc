"""
C{python -m benchmarks.proxypaths [--gib N] [--runs N]}: what the proxy's
hot path would cost on this kernel if it moved a pipe's bytes to the link
another way.

The proxy must look at every byte (CRC-32C for the cache to verify, and a
copy it keeps until the cache has taken it, for a resume); the question is
whether the kernel can skip a copy. One pipe (raised to 1 MiB, written by a
child process 1 MiB at a time) is relayed to a loopback TCP connection read
by another child, which checks the CRC-32C of what it received. Each way is
measured in this process only (CPU seconds per GiB, from C{getrusage}):

- C{copy}, imgrelay's way: C{readv} into a reused buffer, checksum,
  C{writev} to the socket.
- C{vmsplice}: the same read and checksum, then the buffer's pages handed
  to a second pipe (C{vmsplice}) and spliced from it to the socket. The
  socket then refers to the buffer until the receiver has read it, so a
  buffer reused too soon sends whatever was read into it later: with a
  ring of four buffers, this way fails its checksum.
- C{tee}: the pipe duplicated into a second pipe (C{tee}), that one read
  and checksummed, the original spliced to the socket.
- C{splice}: the pipe spliced to the socket with no look at all: no
  checksum is possible, a floor for reference, not a way imgrelay could go.

Run by hand, like the rest of C{benchmarks/}; the figures go in the README.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import mmap
import os
import resource
import socket
import statistics
import struct
import sys
import time
from typing import Callable, Optional

from crc32c import crc32c

BLOCK = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_F_MOVE = 1
_SPLICE_F_MORE = 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
_libc.tee.restype = ctypes.c_ssize_t


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc.vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_size_t, ctypes.c_uint]
_libc.vmsplice.restype = ctypes.c_ssize_t


def _check(n: int) -> int:
    if n < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return n


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    fcntl.fcntl(r, _F_SETPIPE_SZ, BLOCK)
    return r, w


def _map(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))


def _writer(w: int, total: int) -> int:
    """Write C{total} bytes of random content into C{w}; @return: their CRC."""
    source = _map(BLOCK * 17)
    source.write(os.urandom(len(source)))
    view = memoryview(source)
    crc, left, i = 0, total, 0
    while left:
        start = (i * 12289) % (BLOCK * 16)
        piece = view[start : start + min(BLOCK, left)]
        crc = crc32c(piece, crc)
        done = 0
        while done < len(piece):
            done += os.write(w, piece[done:])
        left -= len(piece)
        i += 1
    return crc


def _receiver(sock: socket.socket, total: int) -> int:
    """Read the connection to its end; @return: the CRC of what came."""
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    crc = got = 0
    while True:
        n = sock.recv_into(buffer)
        if not n:
            break
        crc = crc32c(view[:n], crc)
        got += n
    if got != total:
        raise RuntimeError(f"receiver got {got} bytes of {total}")
    return crc


def _spliceAll(source: int, sock: int, n: int) -> None:
    while n:
        moved = os.splice(source, sock, n, flags=_SPLICE_F_MOVE | _SPLICE_F_MORE)
        if not moved:
            raise RuntimeError("pipe ended inside a splice")
        n -= moved


def _readFully(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.readv(fd, [view[done:]])


def relay(way: str, r: int, sock: int) -> int:
    """
    Move the pipe C{r} to the socket C{sock} one way until the pipe ends.

    @return: The CRC-32C of what passed (0 for C{splice}, which never looks).
    """
    # Spliced pages stay the socket's until the receiver has read them: a
    # buffer must not be read into again before then. Sixty-four of them
    # outlast what the socket buffers can hold (imgrelay's window plays
    # this part: a buffer is reused once the cache reported it taken).
    buffers = [_map(BLOCK) for _ in range(64 if way == "vmsplice" else 4)]
    views = [memoryview(b) for b in buffers]
    sr, sw = _pipe()
    crc, i = 0, 0
    try:
        while True:
            view = views[i % len(views)]
            i += 1
            if way in ("copy", "vmsplice"):
                n = os.readv(r, [view])
                if not n:
                    return crc
                crc = crc32c(view[:n], crc)
            if way == "copy":
                sent = 0
                while sent < n:
                    sent += os.writev(sock, [view[sent:n]])
            elif way == "vmsplice":
                handed = 0
                while handed < n:
                    piece = (ctypes.c_char * (n - handed)).from_buffer(buffers[(i - 1) % len(buffers)], handed)
                    iov = _IOVec(ctypes.addressof(piece), n - handed)
                    moved = _check(_libc.vmsplice(sw, ctypes.byref(iov), 1, 0))
                    del piece
                    _spliceAll(sr, sock, moved)
                    handed += moved
            elif way == "tee":
                n = _check(_libc.tee(r, sw, BLOCK, 0))
                if not n:
                    return crc
                _readFully(sr, view[:n])
                crc = crc32c(view[:n], crc)
                _spliceAll(r, sock, n)
            elif way == "splice":
                n = os.splice(r, sock, BLOCK, flags=_SPLICE_F_MOVE | _SPLICE_F_MORE)
                if not n:
                    return 0
            else:
                raise ValueError(way)
    finally:
        os.close(sr)
        os.close(sw)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fork(child: Callable[[], int], report: int) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.write(report, struct.pack("!I", child()))
        except BaseException as e:
            print(f"child failed: {e}", file=sys.stderr)
            code = 1
        os._exit(code)
    return pid


def measure(way: str, total: int) -> tuple[float, float]:
    """
    Relay C{total} bytes one way, and check them.

    @return: Seconds, and this process's CPU seconds.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    r, w = _pipe()
    reports, report = os.pipe()
    writer = _fork(lambda: _writer(w, total), report)
    os.close(w)
    reader = _fork(lambda: _receiver(listener.accept()[0], total), report)
    sock = socket.create_connection(listener.getsockname())
    listener.close()
    began, cpu = time.perf_counter(), _cpu()
    crc = relay(way, r, sock.fileno())
    seconds, cpu = time.perf_counter() - began, _cpu() - cpu
    sock.close()
    os.close(r)
    os.close(report)
    for pid in (writer, reader):
        _, status = os.waitpid(pid, 0)
        if status:
            raise RuntimeError(f"{way}: a child failed")
    data = os.read(reports, 8)
    os.close(reports)
    crcs = set(struct.unpack("!II", data))
    if way != "splice":
        crcs.add(crc)
    if len(crcs) != 1:
        raise RuntimeError(f"{way}: checksums differ: {sorted(crcs)}")
    return seconds, cpu


def main(argv: Optional[list[str]] = None) -> int:
    """
    Measure every way, alternating them, and print a table.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxypaths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB relayed per run (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each way (default 3)")
    args = parser.parse_args(argv)
    total = int(args.gib * (1 << 30))
    ways = ["copy", "vmsplice", "tee", "splice"]
    measured: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    for run in range(args.runs):
        for way in ways if run % 2 == 0 else ways[::-1]:
            measured[way].append(measure(way, total))
    gib = total / (1 << 30)
    print(f"one pipe to loopback TCP, {args.gib:g} GiB per run, {args.runs} runs, every byte checked (CRC-32C)")
    print(f"{'way':<10} {'GB/s':>6} {'CPU s/GiB':>10} {'min':>6} {'max':>6}")
    for way in ways:
        cpus = [c / gib for _, c in measured[way]]
        rate = statistics.median(total / s / 1e9 for s, _ in measured[way])
        print(f"{way:<10} {rate:6.2f} {statistics.median(cpus):10.3f} {min(cpus):6.3f} {max(cpus):6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
