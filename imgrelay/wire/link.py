# -*- test-case-name: tests.wire.test_link -*-
"""
The encoding of imgrelay's link protocol: which messages each side sends,
which carry a raw payload, and the framers that parse each direction.
See C{docs/link-protocol.md}.
"""

from __future__ import annotations

from imgrelay.wire.framing import DEFAULT_MAX_HEADER, Framer, MalformedHeader, decodeEnvelope, encodeHeader
from imgrelay.wire.pb import link_pb2

#: The link protocol's version, sent in Hello; the cache refuses others.
VERSION = 1

#: The version C{imgrelay migrate} speaks: version 1, and a verdict link
#: after the session (see C{docs/migrate.md}).
VERDICT_VERSION = 2

#: The link's length prefix: network byte order.
PREFIX = "!I"

#: How an image is opened (see C{OpenMode} in C{link.proto}).
CREATE = link_pb2.CREATE
REPLACE = link_pb2.REPLACE
APPEND = link_pb2.APPEND

#: The largest chunk a proxy sends and a cache accepts.
MAX_CHUNK = 16 << 20

ProxyMessage = link_pb2.ProxyMessage
CacheMessage = link_pb2.CacheMessage


def _decodeProxy(data: bytes) -> tuple[link_pb2.ProxyMessage, int]:
    message, kind = decodeEnvelope(ProxyMessage, data, "link message from the proxy")
    if kind == "chunk":
        length = message.chunk.length
        if length > MAX_CHUNK:
            raise MalformedHeader(f"chunk of {length} bytes is over {MAX_CHUNK}")
        return message, length
    return message, 0


def _decodeCache(data: bytes) -> tuple[link_pb2.CacheMessage, int]:
    message, _ = decodeEnvelope(CacheMessage, data, "link message from the cache")
    return message, 0


def proxyMessageFramer(maxHeaderSize: int = DEFAULT_MAX_HEADER) -> Framer[link_pb2.ProxyMessage]:
    """
    @return: A framer for what the cache receives.
    """
    return Framer(_decodeProxy, PREFIX, maxHeaderSize)


def helloFramer(maxHeaderSize: int = DEFAULT_MAX_HEADER) -> Framer[link_pb2.ProxyMessage]:
    """
    @return: A framer for the first message of a link, which stops there: it
        awaits a decision after that header, so L{Framer.drain} hands over
        what followed it.
    """

    def decode(data: bytes) -> tuple[link_pb2.ProxyMessage, None]:
        message, _ = _decodeProxy(data)
        return message, None

    return Framer(decode, PREFIX, maxHeaderSize)


def cacheMessageFramer(maxHeaderSize: int = DEFAULT_MAX_HEADER) -> Framer[link_pb2.CacheMessage]:
    """
    @return: A framer for what the proxy receives.
    """
    return Framer(_decodeCache, PREFIX, maxHeaderSize)


def frame(message: link_pb2.ProxyMessage | link_pb2.CacheMessage) -> bytes:
    """
    @return: C{message} serialized behind its length prefix.
    """
    return encodeHeader(message, PREFIX)


def chunkHeader(image: int, length: int) -> bytes:
    """
    The framed header that announces C{length} raw bytes of C{image}.
    """
    return frame(ProxyMessage(chunk=link_pb2.Chunk(image=image, length=length)))
