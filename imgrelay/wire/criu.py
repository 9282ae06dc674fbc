# -*- test-case-name: tests.wire.test_criu -*-
"""
The encoding of CRIU's local protocols (C{../shared/spec/criu-wire.md}):
little-endian length prefixes and proto2 messages.
"""

from __future__ import annotations

from typing import Optional, Sequence

from google.protobuf.message import Message

from imgrelay.wire.framing import DEFAULT_MAX_HEADER, Framer, MalformedHeader, encodeHeader
from imgrelay.wire.pb import criu_pb2

#: CRIU frames with a u32 in the host's byte order: little-endian on every
#: architecture CRIU supports here.
PREFIX = "<I"

#: The byte CRIU sends with each passed file descriptor.
FD_BYTE = b"\x00"

#: The image a CRIU dump (or pre-dump) writes last, and only when it
#: succeeded: a dump stream without it is the stream of a failed dump.
INVENTORY = "inventory.img"

#: A remote-protocol header's C{open_mode}: a read (Linux's value).
O_RDONLY = 0

#: A remote-protocol header's C{open_mode}: a write (Linux's value).
O_WRONLY = 1

#: A remote-protocol header's C{open_mode} bit: an append (Linux's value).
O_APPEND = 1024

#: The local reply's error for an image that does not exist.
ENOENT = 2

#: The image name of the remote protocol's snapshot list.
PARENT = "parent"


def frame(message: Message) -> bytes:
    """
    @param message: A protobuf message.
    @return: C{message} serialized behind CRIU's length prefix.
    """
    return encodeHeader(message, PREFIX)


def decodeLocalImageHeader(data: bytes) -> tuple[criu_pb2.LocalImageHeader, None]:
    """
    Decode the header of a remote-protocol connection (spec section 2), for
    a L{Framer}: what follows it depends on what it says.

    @param data: The header's body, without its prefix.
    @return: The header, and None: the consumer decides the payload.
    @raise MalformedHeader: If its name or snapshot id is not UTF-8.
    @raise google.protobuf.message.DecodeError: If it is no header (the
        framer reports that as L{MalformedHeader} too).
    """
    header = criu_pb2.LocalImageHeader.FromString(data)
    if not isinstance(header.name, str) or not isinstance(header.snapshot_id, str):
        raise MalformedHeader("image name or snapshot id is not UTF-8")
    return header, None


def decodeSnapshotIdRecord(data: bytes) -> tuple[criu_pb2.SnapshotIdRecord, int]:
    """
    Decode one record of CRIU's snapshot list (spec section 2), for a
    L{Framer}.

    @param data: The record's body, without its prefix.
    @return: The record, and 0: records follow each other back to back.
    @raise MalformedHeader: If its snapshot id is not UTF-8.
    @raise google.protobuf.message.DecodeError: If it is no record (the
        framer reports that as L{MalformedHeader} too).
    """
    record = criu_pb2.SnapshotIdRecord.FromString(data)
    if not isinstance(record.snapshot_id, str):
        raise MalformedHeader("snapshot id is not UTF-8")
    return record, 0


def localReply(error: int) -> bytes:
    """
    @param error: 0, or an errno such as L{ENOENT}.
    @return: The framed local reply to a remote-protocol read.
    """
    return frame(criu_pb2.LocalReply(error=error))


def snapshotListReply(snapshots: Optional[Sequence[str]]) -> bytes:
    """
    @param snapshots: The snapshot list, in push order; None if there is
        none.
    @return: The answer to a read of the snapshot list: a local reply,
        then (with error 0) each id as a framed snapshot id record.
    """
    if snapshots is None:
        return localReply(ENOENT)
    return localReply(0) + b"".join(frame(criu_pb2.SnapshotIdRecord(snapshot_id=s)) for s in snapshots)


def _parseRequest(data: bytes) -> criu_pb2.StreamRequest:
    request = criu_pb2.StreamRequest.FromString(data)
    # proto2 strings are not checked by the parser: invalid UTF-8 comes
    # back as bytes.
    if not isinstance(request.filename, str):
        raise MalformedHeader(f"image name {request.filename!r} is not UTF-8")
    return request


def _captureRequest(data: bytes) -> tuple[criu_pb2.StreamRequest, int]:
    # On the dump side every request is followed by its pipe's fd byte.
    return _parseRequest(data), 1


def _serveRequest(data: bytes) -> tuple[criu_pb2.StreamRequest, None]:
    # On the restore side the pipe comes only if the reply said it exists.
    return _parseRequest(data), None


def streamCaptureFramer(maxHeaderSize: int = DEFAULT_MAX_HEADER) -> Framer[criu_pb2.StreamRequest]:
    """
    @return: A framer for CRIU's C{--stream} dump connection.
    """
    return Framer(_captureRequest, PREFIX, maxHeaderSize)


def streamServeFramer(maxHeaderSize: int = DEFAULT_MAX_HEADER) -> Framer[criu_pb2.StreamRequest]:
    """
    @return: A framer for CRIU's C{--stream} restore connection; after each
        request the consumer says whether a pipe follows.
    """
    return Framer(_serveRequest, PREFIX, maxHeaderSize)


def streamReply(exists: bool) -> bytes:
    """
    @return: The framed reply to a restore request.
    """
    return frame(criu_pb2.StreamReply(exists=exists))
