# -*- test-case-name: tests.wire.test_fetch -*-
"""
The encoding of the cache's local fetch service (C{imgrelay fetch}): the
messages the cache sends and the framer the client parses them with. Only
the cache speaks; see C{proto/imgrelay/fetch.proto} and C{docs/cli.md}.
"""

from __future__ import annotations

from imgrelay.wire.framing import DEFAULT_MAX_HEADER, Framer, decodeEnvelope, encodeHeader
from imgrelay.wire.pb import fetch_pb2

#: The fetch protocol's version, sent in Begin; the client refuses others.
VERSION = 1

#: The length prefix: network byte order, as on the link.
PREFIX = "!I"

FetchMessage = fetch_pb2.FetchMessage


def _decode(data: bytes) -> tuple[fetch_pb2.FetchMessage, int]:
    message, kind = decodeEnvelope(FetchMessage, data, "fetch message from the cache")
    if kind == "image":
        return message, message.image.size
    return message, 0


def fetchMessageFramer(maxHeaderSize: int = DEFAULT_MAX_HEADER) -> Framer[fetch_pb2.FetchMessage]:
    """
    @return: A framer for what the fetch client receives: each C{image}
        header is followed by its C{size} raw bytes.
    """
    return Framer(_decode, PREFIX, maxHeaderSize)


def frame(message: fetch_pb2.FetchMessage) -> bytes:
    """
    @return: C{message} serialized behind its length prefix.
    """
    return encodeHeader(message, PREFIX)


def begin(session: str, images: int, size: int) -> bytes:
    """
    @return: The framed Begin of a complete session.
    """
    return frame(FetchMessage(begin=fetch_pb2.Begin(version=VERSION, session=session, images=images, bytes=size)))


def image(snapshotId: str, name: str, size: int, crc: int) -> bytes:
    """
    @return: The framed header that announces an image's C{size} bytes.
    """
    return frame(FetchMessage(image=fetch_pb2.Image(snapshot_id=snapshotId, name=name, size=size, crc32c=crc)))


def end(images: int, size: int, digest: bytes) -> bytes:
    """
    @return: The framed End.
    """
    return frame(FetchMessage(end=fetch_pb2.End(images=images, bytes=size, manifest_sha256=digest)))


def error(reason: str) -> bytes:
    """
    @return: The framed Error.
    """
    return frame(FetchMessage(error=fetch_pb2.Error(reason=reason)))
