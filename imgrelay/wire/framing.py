# -*- test-case-name: tests.wire.test_framing -*-
"""
Sans-IO framing shared by every imgrelay protocol: a fixed 4-byte length
prefix, a protobuf message of that length, and after some messages a raw
payload whose length the message announced.

CRIU's local protocols put a little-endian prefix before each message
(C{"<I"}); imgrelay's link uses network order (C{"!I"}). The file
descriptors CRIU passes ride on one C{0x00} byte each; to the framer that
byte is a one-byte payload like any other.

The L{Framer} never touches a transport: L{Framer.feed} takes bytes and yields
L{HeaderReceived}, L{PayloadChunk} and L{PayloadDone} events.
"""

from __future__ import annotations

import struct
from enum import Enum, auto
from typing import Callable, Generic, Iterator, TypeVar, Union

import attrs
from google.protobuf.message import Message

from imgrelay.core.limits import DEFAULT_MAX_HEADER

M = TypeVar("M")
E = TypeVar("E", bound=Message)

#: A decoder turns one header into its message and the length of the raw
#: payload that follows it: C{0} for none, C{None} when the consumer decides
#: later (see L{Framer.expectPayload}). It raises any exception for a header
#: it cannot accept.
Decoder = Callable[[bytes], "tuple[M, int | None]"]


class FramingError(Exception):
    """
    The byte stream broke the framing rules; the connection must close.
    """


class HeaderTooLarge(FramingError):
    """
    A length prefix announced a header longer than the framer accepts.
    """


class MalformedHeader(FramingError):
    """
    A header's bytes could not be decoded, or were refused by the decoder.
    """


@attrs.frozen
class HeaderReceived(Generic[M]):
    """
    A complete header arrived.

    @ivar message: What the decoder made of it.
    """

    message: M


@attrs.frozen
class PayloadChunk:
    """
    Some bytes of the current payload.

    @ivar data: A view into the bytes given to L{Framer.feed} (no copy).
    """

    data: memoryview


@attrs.frozen
class PayloadDone:
    """
    The current payload is complete.
    """


Event = Union[HeaderReceived[M], PayloadChunk, PayloadDone]


class _State(Enum):
    PREFIX = auto()
    HEADER = auto()
    DECIDE = auto()
    PAYLOAD = auto()
    HELD = auto()
    FAILED = auto()


#: The states in which what is fed is kept for later.
_WAITING = (_State.DECIDE, _State.HELD)


def decodeEnvelope(cls: type[E], data: bytes, what: str) -> tuple[E, str]:
    """
    Parse an envelope: a protobuf message whose C{oneof kind} says what it
    carries.

    @param cls: The envelope's message class.
    @param data: Its serialized bytes.
    @param what: What it is, for the error (e.g. C{"link message from the
        proxy"}).
    @return: The message and its kind.
    @raise MalformedHeader: If no kind is set (an empty body, or a kind
        from a later version).
    """
    message = cls.FromString(data)
    kind = message.WhichOneof("kind")
    if kind is None:
        raise MalformedHeader(f"unknown or empty {what}")
    return message, kind


def encodeHeader(message: Message, prefix: str = "!I") -> bytes:
    """
    Serialize C{message} with its length prefix.

    @param message: The protobuf message.
    @param prefix: The C{struct} format of the length.
    @return: The framed bytes.
    """
    body = message.SerializeToString()
    return struct.pack(prefix, len(body)) + body


class Framer(Generic[M]):
    """
    Parse a stream of length-prefixed headers and raw payloads.

    @ivar maxHeaderSize: The longest header accepted.
    """

    def __init__(
        self,
        decode: Callable[[bytes], tuple[M, int | None]],
        prefix: str = "!I",
        maxHeaderSize: int = DEFAULT_MAX_HEADER,
    ) -> None:
        """
        @param decode: See L{Decoder}.
        @param prefix: The C{struct} format of the length prefix, C{"<I"} or
            C{"!I"}.
        @param maxHeaderSize: The longest header accepted; a longer prefix is
            a L{HeaderTooLarge} error, raised before anything is buffered.
        """
        self._decode = decode
        self._prefix = struct.Struct(prefix)
        self.maxHeaderSize = maxHeaderSize
        self._state = _State.PREFIX
        self._buffer = bytearray()  # a partial prefix or header
        self._stash = bytearray()  # what arrived while a decision was pending
        self._headerLength = 0
        self._remaining = 0

    @property
    def buffered(self) -> int:
        """
        How many bytes are held waiting for a decision or a complete header.
        """
        return len(self._buffer) + len(self._stash)

    @property
    def awaitingDecision(self) -> bool:
        """
        Whether the last header's payload length is still to be given with
        L{expectPayload}.
        """
        return self._state is _State.DECIDE

    @property
    def atBoundary(self) -> bool:
        """
        Whether the stream so far ends exactly between two messages: nothing
        partial is buffered and no payload or decision is outstanding.
        """
        return self._state is _State.PREFIX and not self._buffer and not self._stash

    @property
    def payloadRemaining(self) -> int:
        """
        How many bytes of the current payload are still to come: the
        consumer may receive them itself and report them with
        L{skipPayload} instead of feeding them. 0 outside a payload, or
        while bytes fed earlier are held and must be fed first.
        """
        if self._state is _State.PAYLOAD and not self._stash:
            return self._remaining
        return 0

    def skipPayload(self, n: int) -> bool:
        """
        The consumer received C{n} bytes of the current payload itself.

        @param n: At most L{payloadRemaining}.
        @return: Whether the payload is now complete (no L{PayloadDone} is
            produced for it).
        """
        if not 0 < n <= self.payloadRemaining:
            raise ValueError(f"cannot skip {n} of {self.payloadRemaining} payload bytes")
        self._remaining -= n
        if self._remaining:
            return False
        self._state = _State.PREFIX
        return True

    def expectPayload(self, length: int) -> None:
        """
        Say how long the payload of the last header is, for a header whose
        decoder answered C{None}. Call L{feed} (with C{b""} if nothing new
        arrived) to go on parsing what was buffered meanwhile.

        @param length: The payload's length, C{0} for none.
        @raise RuntimeError: If no decision was awaited.
        """
        if self._state is not _State.DECIDE:
            raise RuntimeError("no payload decision is pending")
        self._startPayload(length)

    def hold(self) -> None:
        """
        Stop after the event just produced, between two messages: what is
        fed until L{release} is kept, not parsed (the consumer has work to
        finish first, such as decoding the payload that just ended).

        @raise RuntimeError: If not between two messages.
        """
        if self._state is not _State.PREFIX or self._buffer:
            raise RuntimeError("hold only between two messages")
        self._state = _State.HELD

    @property
    def held(self) -> bool:
        """
        Whether L{hold} stopped the parsing.
        """
        return self._state is _State.HELD

    def release(self) -> None:
        """
        Undo L{hold}; call L{feed} (with C{b""} if nothing new arrived) to
        parse what was kept meanwhile.

        @raise RuntimeError: If not held.
        """
        if self._state is not _State.HELD:
            raise RuntimeError("release without hold")
        self._state = _State.PREFIX

    def drain(self) -> bytes:
        """
        Stop parsing while a decision is pending (after the whole of the
        C{feed} that produced the header was consumed), and return the bytes
        that arrived after that header: for a stream whose first message is
        read here and the rest by another parser.

        @return: What followed the header, possibly nothing.
        @raise RuntimeError: If no decision is pending.
        """
        if self._state is not _State.DECIDE:
            raise RuntimeError("drain needs a pending payload decision")
        rest = bytes(self._stash)
        self._stash.clear()
        self._state = _State.FAILED
        return rest

    def _startPayload(self, length: int) -> None:
        if length < 0:
            raise MalformedHeader(f"negative payload length {length}")
        self._remaining = length
        self._state = _State.PAYLOAD if length else _State.PREFIX

    def _fail(self, error: FramingError) -> FramingError:
        self._state = _State.FAILED
        self._buffer.clear()
        self._stash.clear()
        return error

    def feed(self, data: bytes) -> Iterator[Event[M]]:
        """
        Parse more bytes.

        Events are produced lazily: a consumer that handles a
        L{HeaderReceived} whose payload is undecided may call
        L{expectPayload} before asking for the next event.

        @param data: The bytes that arrived.
        @return: The events those bytes complete, in order.
        @raise FramingError: When the stream is malformed; the framer is then
            unusable.
        """
        if self._state is _State.FAILED:
            raise FramingError("feed after a framing error")
        if self._state in _WAITING:
            self._stash += data
            return
        if self._stash:
            # Bytes that arrived while a decision was pending, or while
            # held, come first.
            stashed = bytes(self._stash)
            self._stash.clear()
            yield from self._feed(stashed)
            if self._state in _WAITING:
                self._stash += data
                return
        yield from self._feed(data)

    def _feed(self, data: bytes) -> Iterator[Event[M]]:
        view = memoryview(data)
        end = len(view)
        pos = 0
        buf = self._buffer
        prefixSize = self._prefix.size
        while True:
            state = self._state
            if state is _State.PAYLOAD:
                if pos == end:
                    return
                n = min(self._remaining, end - pos)
                self._remaining -= n
                pos += n
                if not self._remaining:
                    self._state = _State.PREFIX
                yield PayloadChunk(view[pos - n : pos])
                if not self._remaining:
                    yield PayloadDone()
            elif state in _WAITING:
                self._stash += view[pos:]
                return
            else:
                need = prefixSize if state is _State.PREFIX else self._headerLength
                if len(buf) + end - pos < need:
                    buf += view[pos:]
                    return
                take = need - len(buf)
                if buf:
                    buf += view[pos : pos + take]
                    piece = bytes(buf)
                    buf.clear()
                else:
                    piece = bytes(view[pos : pos + take])
                pos += take
                if state is _State.PREFIX:
                    (length,) = self._prefix.unpack(piece)
                    if length > self.maxHeaderSize:
                        raise self._fail(
                            HeaderTooLarge(
                                f"header of {length} bytes announced, "
                                f"at most {self.maxHeaderSize} accepted"
                            )
                        )
                    self._headerLength = length
                    self._state = _State.HEADER
                else:
                    yield from self._header(piece)

    def _header(self, piece: bytes) -> Iterator[Event[M]]:
        try:
            message, payload = self._decode(piece)
        except FramingError as e:
            raise self._fail(e)
        except Exception as e:
            raise self._fail(MalformedHeader(f"undecodable header: {e}"))
        if payload is None:
            self._state = _State.DECIDE
        else:
            try:
                self._startPayload(payload)
            except FramingError as e:
                raise self._fail(e)
        yield HeaderReceived(message)
