# -*- test-case-name: tests.wire.test_criulink -*-
"""
CRIU's own proxy-to-cache format (C{--link criu}): its open modes, the
snapshot list image, and the encoding of remote image headers and of the
snapshot list (C{../shared/spec/criu-wire.md}, section 2). The proxy's
sender is L{imgrelay.proxy.criulink}, the cache's receiver
L{imgrelay.cache.criulink}.

The open modes and C{PARENT} are CRIU's, shared with C{--remote}
(L{imgrelay.wire.criu}); they are named here too for the modules of this
format.
"""

from __future__ import annotations

from imgrelay.core.names import checkId
from imgrelay.wire.criu import O_APPEND, O_WRONLY, PARENT, PREFIX, decodeSnapshotIdRecord, frame
from imgrelay.wire.framing import Framer, FramingError, HeaderReceived, MalformedHeader
from imgrelay.wire.pb import criu_pb2

__all__ = [
    "MAX_SNAPSHOT_LIST", "O_APPEND", "O_WRONLY", "PARENT", "decodeRemoteHeader", "parseSnapshotList", "remoteHeader",
]

#: The most a snapshot list message may hold (each id is at most 4 KiB).
MAX_SNAPSHOT_LIST = 1 << 20


def decodeRemoteHeader(data: bytes) -> tuple[criu_pb2.RemoteImageHeader, int]:
    """
    @return: A remote image header, and the size of the payload after it.
    @raise MalformedHeader: If a name in it is not UTF-8.
    """
    header = criu_pb2.RemoteImageHeader.FromString(data)
    # proto2 strings are not checked by the parser: bad UTF-8 is bytes.
    if not isinstance(header.name, str) or not isinstance(header.snapshot_id, str):
        raise MalformedHeader("remote image header holds a name that is not UTF-8")
    return header, header.size


def remoteHeader(snapshotId: str, name: str, openMode: int, size: int) -> bytes:
    """@return: A framed remote image header."""
    return frame(criu_pb2.RemoteImageHeader(name=name, snapshot_id=snapshotId, open_mode=openMode, size=size))


def parseSnapshotList(content: bytes) -> list[str]:
    """
    @param content: A C{parent} message's content: framed C{SnapshotIdRecord}s.
    @return: Their snapshot ids, in order.
    @raise FramingError: If a record is malformed or cut short.
    @raise BadName: If an id is not acceptable.
    """
    framer: Framer[criu_pb2.SnapshotIdRecord] = Framer(decodeSnapshotIdRecord, PREFIX)
    ids = [checkId("snapshot id", e.message.snapshot_id) for e in framer.feed(content) if isinstance(e, HeaderReceived)]
    if not framer.atBoundary:
        raise FramingError("snapshot list ends in the middle of a record")
    return ids
