# -*- test-case-name: tests.scenarios.test_stream,tests.cache.test_fetchserve -*-
"""
The real CRIU 4.2 dump bundled with imgrelay (C{traces/}): its recorded
requests, images made to its recorded sizes, and a replayer that dumps
them through a C{--stream} capture socket as CRIU did.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any, Iterator, Optional


#: How much the client writes or reads at once.
from imgrelay.testing.criu import StreamDumper, writeAll


def traceDir() -> str:
    """
    @return: The directory of the bundled CRIU traces.
    """
    return str(resources.files("imgrelay.testing") / "traces")


def loadTrace(name: str) -> dict[str, Any]:
    """
    @param name: C{"dump-stream.json"} or C{"restore-stream.json"}.
    @return: The parsed trace.
    """
    with open(os.path.join(traceDir(), name)) as f:
        trace: dict[str, Any] = json.load(f)
        return trace


def patternBytes(name: str, size: int) -> bytes:
    """
    Deterministic content for images the traces hold only the size of
    (C{pages-*.img}): no two blocks alike, so a misplaced block shows.
    """
    seed = name.encode()
    block = bytearray()
    counter = 0
    import hashlib

    while len(block) < size:
        block += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest() * 32
        counter += 1
    return bytes(block[:size])


def traceImages() -> dict[str, bytes]:
    """
    @return: Every image of the recorded dump: the real files, and
        generated content of the recorded size for the pages.
    """
    images: dict[str, bytes] = {}
    directory = os.path.join(traceDir(), "images")
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            images[name] = f.read()
    for event in loadTrace("dump-stream.json")["events"]:
        if event["op"] == "close" and event["name"] not in images:
            images[event["name"]] = patternBytes(event["name"], event["size"])
    return images


def replayDump(path: str, images: dict[str, bytes], events: Optional[list[dict[str, Any]]] = None) -> None:
    """
    Replay the recorded dump event by event: open a pipe at each C{open},
    write half the content then, the rest at its C{close}; close the socket
    at C{socket-eof}. Pipes overlap exactly as CRIU's did.

    @param path: The proxy's socket.
    @param images: Content by name (see L{traceImages}).
    @param events: The events; the bundled trace's by default.
    """
    if events is None:
        events = loadTrace("dump-stream.json")["events"]
    dumper = StreamDumper(path)
    pipes: dict[str, int] = {}
    try:
        for event in events:
            op = event["op"]
            if op == "open":
                name = event["name"]
                w = pipes[name] = dumper.open(name)
                writeAll(w, images[name][: len(images[name]) // 2])
            elif op == "close":
                name = event["name"]
                w = pipes.pop(name)
                writeAll(w, images[name][len(images[name]) // 2 :])
                os.close(w)
            elif op == "socket-eof":
                dumper.close()
    finally:
        for w in pipes.values():
            os.close(w)
        dumper.close()


def restoreNames() -> Iterator[tuple[str, bool]]:
    """
    @return: The recorded restore's requests: (name, whether it existed).
    """
    for request in loadTrace("restore-stream.json")["requests"]:
        if "name" in request:  # the last entry is the socket's EOF
            yield request["name"], request["exists"]
