# -*- test-case-name: tests.core.test_limits -*-
"""
The limits that keep a peer, faulty or hostile, from making a daemon hold
more than it should. Each has a safe default, is configurable, and ends
only the offending connection or session, with a log line naming it.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from imgrelay.core.names import MAX_NAME


#: The longest message header taken from a peer by default, in bytes.
DEFAULT_MAX_HEADER = 64 * 1024


def flag(field: str) -> str:
    """
    @param field: An option's name in a config, such as C{maxSessions}.
    @return: The same option on a daemon's command line: C{--max-sessions}.
    """
    return "--" + re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), field)


def positive(instance: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """
    An attrs validator: C{value} is None or above 0.

    @raise ValueError: Naming the option by its command-line flag.
    """
    if value is not None and not value > 0:
        raise ValueError(f"{flag(attribute.name)}: {value!r} is not positive")


@attrs.frozen
class Limits:
    """
    @ivar maxImages: Images in one session (all snapshots together).
    @ivar maxSessionBytes: Bytes in one session.
    @ivar maxLocalConnections: Local (CRIU) connections open at once on
        one socket.
    @ivar maxHeaderSize: The longest message header accepted from a peer
        (link or CRIU), in bytes.
    @ivar maxNameLength: The longest image name accepted, in UTF-8 bytes.
    """

    maxImages: int = attrs.field(default=100_000, validator=positive)
    maxSessionBytes: int = attrs.field(default=1 << 40, validator=positive)
    maxLocalConnections: int = attrs.field(default=256, validator=positive)
    maxHeaderSize: int = attrs.field(default=DEFAULT_MAX_HEADER, validator=positive)
    maxNameLength: int = attrs.field(default=MAX_NAME, validator=positive)


#: How long a new connection may take to open its exchange, in seconds: a
#: link's hello (or the answer to it), a remote-protocol connection's
#: header and pipe.
DEFAULT_IDLE_TIMEOUT = 30.0


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parseSize(value: str) -> int:
    """
    @param value: A number of bytes, with an optional suffix K, M, G or T
        (powers of 1024, an optional trailing C{B} or C{iB} allowed).
    @return: The bytes, at least 1.
    @raise ValueError: For anything else.
    """
    text = value.strip().upper()
    for tail in ("IB", "B"):
        if text.endswith(tail) and len(text) > len(tail):
            text = text[: -len(tail)]
            break
    unit = text[-1:] if text[-1:] in _UNITS else ""
    number = text[: len(text) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"{value!r} is not a size such as 20G or 512M")
    size = int(number) * _UNITS[unit]
    if size < 1:
        raise ValueError(f"{value!r} is not a positive size")
    return size
