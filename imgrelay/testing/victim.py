# -*- test-case-name: tests.realcriu.test_victims -*-
"""
Processes for real CRIU to dump and restore: each holds state, keeps
working, and proves on request that the state survived intact.

Run as a script with the standard library only (C{python -I victim.py KIND
--dir DIR ...}), so that its memory is its own and not imgrelay's. It moves
its stdout and stderr to C{DIR/victim.log}, writes C{DIR/ready.json} once
its state is built, and on each C{SIGUSR1} writes C{DIR/report.json}
(through a rename, so a reader never sees half of it) with C{"ok"} true
only when every check passed. Kinds:

  - C{memory --mib N}: N MiB of random bytes and a counter it keeps
    advancing; the report recomputes the bytes' SHA-256.
  - C{tree}: a parent and two children, one joined by a pair of pipes, one
    by a UNIX socketpair, and a regular file open at a position; the
    report sends a number round each child and reads on from the position.
  - C{heap --objects N}: N small dicts, strings and lists built from a
    seed, as a Python service's heap is; the report recomputes their
    digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable

#: Where the tree victim's file is read from, and how long the file is.
FILE_POSITION = 12345
FILE_SIZE = 1 << 16


def _writeJSON(path: str, document: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(document, f)
    os.rename(tmp, path)


def _memory(options: argparse.Namespace) -> Callable[[], dict[str, Any]]:
    size = options.mib << 20
    data = bytearray(size)
    step = 16 << 20
    for offset in range(0, size, step):
        data[offset:offset + step] = os.urandom(min(step, size - offset))
    expected = hashlib.sha256(data).hexdigest()

    def check() -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        return {"ok": digest == expected, "digest": digest, "expected": expected, "bytes": len(data)}

    return check


def _echo(receive: Callable[[], bytes], send: Callable[[bytes], Any], change: Callable[[int], int]) -> None:
    while True:
        got = receive()
        if len(got) != 8:
            os._exit(0)
        send(struct.pack("<q", change(struct.unpack("<q", got)[0])))


def _tree(options: argparse.Namespace) -> Callable[[], dict[str, Any]]:
    fromParent, toChild = os.pipe()
    fromChild, toParent = os.pipe()
    piped = os.fork()
    if piped == 0:
        os.close(toChild)
        os.close(fromChild)
        _echo(lambda: os.read(fromParent, 8), lambda b: os.write(toParent, b), lambda n: n + 1)
    os.close(fromParent)
    os.close(toParent)
    mine, theirs = socket.socketpair()
    socketed = os.fork()
    if socketed == 0:
        mine.close()
        os.close(toChild)
        os.close(fromChild)
        _echo(lambda: theirs.recv(8), theirs.sendall, lambda n: n * 2)
    theirs.close()
    path = os.path.join(options.dir, "data.bin")
    content = random.Random(7).randbytes(FILE_SIZE)
    with open(path, "wb") as f:
        f.write(content)
    held = open(path, "rb")
    held.read(FILE_POSITION)
    rounds = [0]

    def check() -> dict[str, Any]:
        rounds[0] += 1
        n = rounds[0] * 1000 + 7
        os.write(toChild, struct.pack("<q", n))
        piped_ok = os.read(fromChild, 8) == struct.pack("<q", n + 1)
        mine.sendall(struct.pack("<q", n))
        socket_ok = mine.recv(8) == struct.pack("<q", n * 2)
        position = held.tell()
        read = held.read(100)
        held.seek(FILE_POSITION)
        file_ok = position == FILE_POSITION and read == content[FILE_POSITION:FILE_POSITION + 100]
        alive = [os.waitpid(child, os.WNOHANG) == (0, 0) for child in (piped, socketed)]
        return {
            "ok": piped_ok and socket_ok and file_ok and all(alive),
            "pipe": piped_ok, "socketpair": socket_ok, "file": file_ok, "children": [piped, socketed],
            "alive": alive, "position": position,
        }

    return check


def _heapDigest(heap: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for item in heap:
        h.update(repr(item).encode())
    return h.hexdigest()


def _heap(options: argparse.Namespace) -> Callable[[], dict[str, Any]]:
    rng = random.Random(options.seed)
    heap = [
        {
            "id": i,
            "name": "item-%d-%08x" % (i, rng.getrandbits(32)),
            "tags": ["t%d" % rng.randrange(50) for _ in range(3)],
            "score": rng.random(),
        }
        for i in range(options.objects)
    ]
    expected = _heapDigest(heap)

    def check() -> dict[str, Any]:
        digest = _heapDigest(heap)
        return {"ok": digest == expected and len(heap) == options.objects, "digest": digest, "objects": len(heap)}

    return check


KINDS = {"memory": _memory, "tree": _tree, "heap": _heap}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--dir", required=True)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--objects", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args(argv)
    log = os.open(os.path.join(options.dir, "victim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    wanted = [False]
    signal.signal(signal.SIGUSR1, lambda *_: wanted.__setitem__(0, True))
    check = KINDS[options.kind](options)
    counter = 0
    _writeJSON(os.path.join(options.dir, "ready.json"), {"pid": os.getpid(), "kind": options.kind})
    while True:
        counter += 1
        if wanted[0]:
            wanted[0] = False
            report = check()
            report.update(kind=options.kind, pid=os.getpid(), counter=counter)
            _writeJSON(os.path.join(options.dir, "report.json"), report)
        time.sleep(0.001)


if __name__ == "__main__":
    main(sys.argv[1:])
