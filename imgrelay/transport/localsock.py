# -*- test-case-name: tests.transport.test_localsock -*-
"""
The local UNIX sockets CRIU connects to: where they are made and who may
reach them.

CRIU's peer on these sockets can write any image into a migration, so a
socket must be reachable only by its owner (mode 0600 by default) and live
in a directory nobody else can write (else another user could replace the
socket with their own between two runs). A lock file beside each socket
tells a stale socket of a dead daemon, which is replaced, from a live
daemon's, which is not.
"""

from __future__ import annotations

import os
import stat

from twisted.internet.endpoints import quoteStringArgument

#: The default mode of a local socket.
DEFAULT_MODE = 0o600

#: The socket C{criu dump --stream -D DIR} connects to, inside DIR.
CAPTURE_SOCKET = "streamer-capture.sock"

#: The socket C{criu restore --stream -D DIR} connects to, inside DIR.
SERVE_SOCKET = "streamer-serve.sock"

#: The socket C{criu dump --remote} connects to, in its images directory.
REMOTE_PROXY_SOCKET = "img-proxy.sock"

#: The socket C{criu restore --remote} connects to, in its images directory.
REMOTE_CACHE_SOCKET = "img-cache.sock"

#: The socket C{imgrelay fetch} connects to, in the cache's images directory.
FETCH_SOCKET = "imgrelay-fetch.sock"


class UnsafeDirectory(ValueError):
    """
    A directory others could write to was given for a local socket.
    """


def checkDirectory(path: str) -> None:
    """
    Refuse a directory that is missing, not a directory, not owned by this
    user (or root), or writable by its group or by others.

    @param path: The directory the socket goes in.
    @raise UnsafeDirectory: Saying what is wrong and how to fix it.
    """
    try:
        info = os.stat(path)
    except OSError as e:
        raise UnsafeDirectory(f"{path!r}: {e.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{path!r} is not a directory")
    if info.st_uid not in (os.geteuid(), 0):
        raise UnsafeDirectory(f"{path!r} belongs to uid {info.st_uid}, not to this user: its sockets could be replaced")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{path!r} is writable by {'others' if info.st_mode & stat.S_IWOTH else 'its group'} "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): its sockets could be replaced; chmod go-w it"
        )


def localEndpoint(directory: str, socketName: str, mode: int = DEFAULT_MODE) -> str:
    """
    The server endpoint string of a local socket in a directory, with its
    mode and a lock file.

    @param directory: Where the socket goes (CRIU's images directory).
    @param socketName: Its file name.
    @param mode: Its permission bits.
    """
    path = directory.rstrip("/") + "/" + socketName
    return f"unix:{quoteStringArgument(path)}:mode={mode:o}:lockfile=1"


def parseMode(value: str) -> int:
    """
    Parse an octal socket mode such as C{600} or C{0660}; the owner must
    keep read and write access, and nobody may execute.

    @raise ValueError: For anything else.
    """
    mode = int(value, 8)
    if mode & ~0o666 or mode & 0o600 != 0o600:
        raise ValueError(f"{value!r} is not a socket mode the owner can use (e.g. 600 or 660)")
    return mode
