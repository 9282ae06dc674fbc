# -*- test-case-name: tests.core.test_names -*-
"""
Checks on the names that come from peers: image names (CRIU's, or the
proxy's on the link), snapshot ids and session names.

An image name is a file name in CRIU's images directory, never a path: the
cache keys its memory by it and C{imgrelay fetch} may write it to disk, so a
hostile one must never reach either.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from typing import Optional

#: The longest image name accepted, in UTF-8 bytes (a Linux file name).
MAX_NAME = 255

#: The longest snapshot id (CRIU's images directory path) or session name.
MAX_ID = 4096


class BadName(ValueError):
    """
    A name from a peer is not acceptable; the message says why.
    """


def checkImageName(name: str, maxLength: int = MAX_NAME) -> str:
    """
    Refuse an image name that is empty, C{.} or C{..}, holds a C{/} or a NUL,
    or is longer than C{maxLength} bytes.

    @param name: The name as received.
    @param maxLength: The longest name accepted, in UTF-8 bytes.
    @return: C{name}, unchanged.
    @raise BadName: If it is refused.
    """
    return _checkFileName("image name", name, maxLength, hiddenAllowed=True)


def _checkFileName(kind: str, name: str, maxLength: int, hiddenAllowed: bool) -> str:
    """
    Refuse a name that cannot be one file name: empty, C{.} or C{..} (or,
    unless C{hiddenAllowed}, anything starting with C{.}), holding a C{/}
    or a NUL, or longer than C{maxLength} UTF-8 bytes.
    """
    if not name:
        raise BadName(f"empty {kind}")
    if not hiddenAllowed and name.startswith("."):
        raise BadName(f"{kind} {name[:40]!r} starts with '.'")
    if name in (".", ".."):
        raise BadName(f"{kind} {name!r} is not a file name")
    if "/" in name:
        raise BadName(f"{kind} {name[:40]!r} holds a '/'")
    if "\0" in name:
        raise BadName(f"{kind} {name[:40]!r} holds a NUL")
    if len(name.encode("utf-8", "surrogatepass")) > maxLength:
        raise BadName(f"{kind} {name[:40]!r}... is over {maxLength} bytes")
    return name


def checkId(kind: str, value: str, maxLength: int = MAX_ID) -> str:
    """
    Refuse a snapshot id or session name that holds a NUL or is too long.

    @param kind: What the value is, for the message.
    @param value: The value as received.
    @param maxLength: The longest accepted, in UTF-8 bytes.
    @return: C{value}, unchanged.
    @raise BadName: If it is refused.
    """
    if "\0" in value:
        raise BadName(f"{kind} {value!r} holds a NUL")
    if len(value.encode("utf-8", "surrogatepass")) > maxLength:
        raise BadName(f"{kind} {value[:40]!r}... is over {maxLength} bytes")
    return value


def checkSessionDirName(name: str, maxLength: int = MAX_NAME) -> str:
    """
    Refuse a session name that cannot be a directory of its own under the
    cache's sessions root: empty, C{.} or C{..}, starting with C{.}
    (hidden, and never C{..}), holding a C{/} or a NUL, or longer than
    C{maxLength} bytes.

    @param name: The session name as received.
    @param maxLength: The longest name accepted, in UTF-8 bytes.
    @return: C{name}, unchanged.
    @raise BadName: If it is refused.
    """
    return _checkFileName("session name", name, maxLength, hiddenAllowed=False)


def defaultSessionName(imagesDir: str, host: Optional[str] = None) -> str:
    """
    A session name that is also a safe directory name on the cache (see
    L{checkSessionDirName}), distinct per host and images
    directory: C{HOST-DIRNAME-HASH}, with the images directory's last
    component and the first 8 hex digits of the SHA-256 of its absolute
    path; characters other than letters, digits, C{.}, C{_} and C{-} become
    C{_}.

    @param imagesDir: The images directory.
    @param host: The host's name; this host's by default.
    @return: The name.
    """
    path = os.path.abspath(imagesDir)
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]

    def safe(part: str, longest: int) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", part)[:longest] or "_"

    host = host if host is not None else socket.gethostname()
    name = f"{safe(host, 120)}-{safe(os.path.basename(path) or 'root', 120)}-{digest}"
    return "_" + name[1:] if name.startswith(".") else name
