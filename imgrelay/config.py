# -*- test-case-name: tests.test_config -*-
"""
Every option of each daemon, its default and its cross-checks, in one
frozen object: L{ProxyConfig} for imgrelay-proxy, L{CacheConfig} for
imgrelay-cache.

The twistd plugins build these from their command line
(L{imgrelay.tap.ProxyOptions.config}); an application that embeds a daemon
builds one directly::

    from imgrelay import CacheConfig, CacheService
    CacheService(CacheConfig(listen="tcp:7070", imagesDir="/run/mig")).setServiceParent(app)

A config checks its values together once, when it is made, and raises
C{ValueError} (L{UnsafeDirectory} for a directory others could write to)
naming the option at fault (by its twistd flag: C{sessionsRoot} is
C{--sessions-root}); a service built from it checks nothing again.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import attrs
from twisted.internet.interfaces import IStreamClientEndpoint

from imgrelay.cache.link import DEFAULT_HEARTBEAT
from imgrelay.cache.resume import DEFAULT_RESUME_TIMEOUT
from imgrelay.cache.registry import DEFAULT_MAX_SESSIONS
from imgrelay.core.limits import DEFAULT_IDLE_TIMEOUT, Limits, flag, positive
from imgrelay.core.names import defaultSessionName
from imgrelay.local.criubin import CriuNotFound, findCriu

from imgrelay.observe.service import Observability
from imgrelay.proxy.packer import MODES
from imgrelay.proxy.reconnect import DEFAULT_GIVE_UP
from imgrelay.proxy.stream import DEFAULT_WINDOW, MIN_WINDOW
from imgrelay.transport.localsock import (
    CAPTURE_SOCKET,
    DEFAULT_MODE,
    REMOTE_CACHE_SOCKET,
    REMOTE_PROXY_SOCKET,
    SERVE_SOCKET,
    UnsafeDirectory,
    checkDirectory,
    localEndpoint,
)
from imgrelay.transport.tls import TLSFiles, hostOf

#: CRIU's local protocols: C{criu --stream}, or C{criu --remote}.
PROTOCOLS = ("stream", "remote")

#: Link formats: imgrelay's own (verified), or CRIU's image-proxy to
#: image-cache format (nothing verified).
LINKS = ("imgrelay", "criu")


def _oneOf(choices: tuple[str, ...], what: str) -> Any:
    def check(instance: object, attribute: "attrs.Attribute[str]", value: str) -> None:
        if value not in choices:
            raise ValueError(f"{flag(attribute.name)}: unknown {what} {value!r}: one of {', '.join(choices)}")

    return check


def _notNegative(instance: object, attribute: "attrs.Attribute[float]", value: float) -> None:
    if not 0 <= value < float("inf"):
        raise ValueError(f"{flag(attribute.name)}: {value!r} is not a number of seconds, 0 or more")


def _window(instance: object, attribute: "attrs.Attribute[int]", value: int) -> None:
    if value < MIN_WINDOW:
        raise ValueError(f"--window: {value} bytes is under the smallest window, {MIN_WINDOW} bytes")


def _checkDirectory(path: str, option: str) -> None:
    try:
        checkDirectory(path)
    except UnsafeDirectory as e:
        raise UnsafeDirectory(f"{option}: {e}") from None


def _defaultSessionName(config: ProxyConfig) -> Optional[str]:
    return defaultSessionName(config.imagesDir) if config.imagesDir is not None else None


def _defaultCriu(config: CacheConfig) -> Optional[str]:
    if not config.restore:
        return None
    try:
        return findCriu()
    except CriuNotFound as e:
        raise ValueError(f"--restore needs CRIU: {e} (or give --criu)") from None


def _checkRestore(config: CacheConfig) -> None:
    if config.protocol != "stream" or config.link != "imgrelay" or config.local is not None:
        raise ValueError(
            "--restore runs criu restore --stream on the session's own socket: not with --protocol remote, "
            "--link criu or --local"
        )
    if config.criu is None or not os.access(config.criu, os.X_OK):
        raise ValueError(f"--criu: {config.criu!r} is not an executable file")


def _defaultTLSHostname(config: ProxyConfig) -> Optional[str]:
    return hostOf(config.connect) if isinstance(config.connect, str) else None


@attrs.frozen(kw_only=True)
class ProxyConfig:
    """
    Everything imgrelay-proxy is told.

    @ivar connect: The cache's link: a client endpoint string such as
        C{"tcp:host=dest:port=7070"}, or an endpoint.
    @ivar imagesDir: The directory CRIU dumps to (C{criu dump -D}); CRIU's
        socket is made in it, unless C{local} says otherwise.
    @ivar local: A server endpoint string for CRIU's socket instead of the
        one in C{imagesDir}.
    @ivar sessionName: The name each session is sent under; by default
        this host's name and C{imagesDir} (L{defaultSessionName}).
    @ivar protocol: CRIU's local protocol: C{"stream"} (C{criu dump
        --stream}, on C{imagesDir/streamer-capture.sock}) or C{"remote"}
        (C{criu dump --remote}, on C{imagesDir/img-proxy.sock}).
    @ivar link: C{"imgrelay"}, or C{"criu"} to feed a CRIU image-cache in
        its own format: no acknowledgements, no final handshake, no
        checksums.
    @ivar idleTimeout: Seconds a new connection may take to open its
        exchange: the cache's answer to a link's hello, and with
        C{"remote"} a local connection's header and pipe; None for no
        bound.
    @ivar tls: Certificate, key and CA for a mutually authenticated TLS
        link; None for plain TCP.
    @ivar tlsHostname: The name the cache's certificate must carry; by
        default the host of C{connect}.
    @ivar socketMode: The permission bits of CRIU's socket in C{imagesDir}.
    @ivar limits: Local connections at once, header and name sizes.
    @ivar window: The most bytes of a session held unacknowledged by the
        cache, to send again after a broken link; CRIU's pipes wait while
        it is full.
    @ivar reconnectTimeout: After a broken link the proxy reconnects with
        back-off and resumes the session; it fails the session after this
        many seconds without a link the cache accepted.
    @ivar observability: Progress lines, a stats file, a status fd and an
        HTTP status endpoint.
    @ivar verbose: Log every image, not only those of 1 MiB or more.
    @ivar oneshot: Serve one session: a second dump is refused.
    @ivar compress: How the link is compressed: C{"auto"} (Zstandard where
        it makes the migration faster, chunk by chunk), C{"zstd"},
        C{"lz4"} (every chunk that shrinks), or C{"none"}; only what the
        cache decodes is used.
    @ivar verdict: Each session is C{imgrelay migrate}'s: the cache must
        restore it itself (C{--restore}) and give its verdict afterwards.
    """

    connect: Union[str, IStreamClientEndpoint]
    imagesDir: Optional[str] = None
    local: Optional[str] = None
    sessionName: Optional[str] = attrs.field(default=attrs.Factory(_defaultSessionName, takes_self=True))
    protocol: str = attrs.field(default="stream", validator=_oneOf(PROTOCOLS, "protocol"))
    link: str = attrs.field(default="imgrelay", validator=_oneOf(LINKS, "link format"))
    idleTimeout: Optional[float] = attrs.field(default=DEFAULT_IDLE_TIMEOUT, validator=positive)
    tls: Optional[TLSFiles] = None
    tlsHostname: Optional[str] = attrs.field(default=attrs.Factory(_defaultTLSHostname, takes_self=True))
    socketMode: int = DEFAULT_MODE
    limits: Limits = Limits()
    window: int = attrs.field(default=DEFAULT_WINDOW, validator=_window)
    reconnectTimeout: float = attrs.field(default=DEFAULT_GIVE_UP, validator=positive)
    observability: Observability = Observability()
    verbose: bool = False
    oneshot: bool = False
    compress: str = attrs.field(default="auto", validator=_oneOf(MODES, "compression"))
    verdict: bool = False

    def __attrs_post_init__(self) -> None:
        if self.link == "criu" and self.compress in ("zstd", "lz4"):
            raise ValueError(
                f"--compress {self.compress} needs imgrelay's link: --link criu sends images raw, as CRIU's "
                "image-cache reads them (drop --compress, or use --compress none)"
            )
        if self.imagesDir is None and self.local is None:
            raise ValueError("give the images directory (--images-dir) or a local endpoint for CRIU's socket (--local)")
        if not self.sessionName:
            raise ValueError("give a session name (--session): there is no images directory to name it after")
        if self.tls is not None and not self.tlsHostname:
            raise ValueError("TLS needs the cache's host name (--tls-hostname) to check its certificate against")
        if self.local is None:
            assert self.imagesDir is not None
            _checkDirectory(self.imagesDir, "--images-dir")

    @property
    def maxSessions(self) -> Optional[int]:
        """
        @return: How many sessions the proxy starts in its life: one with
            C{oneshot}, else no limit (None).
        """
        return 1 if self.oneshot else None

    def localDescription(self) -> str:
        """
        @return: The server endpoint string of CRIU's socket: C{local}, or
            the protocol's socket in C{imagesDir}.
        """
        if self.local is not None:
            return self.local
        assert self.imagesDir is not None
        socket = REMOTE_PROXY_SOCKET if self.protocol == "remote" else CAPTURE_SOCKET
        return localEndpoint(self.imagesDir, socket, self.socketMode)


@attrs.frozen(kw_only=True)
class CacheConfig:
    """
    Everything imgrelay-cache is told.

    @ivar listen: A server endpoint string for links, e.g. C{"tcp:7070"}.
    @ivar imagesDir: The directory CRIU restores from (C{criu restore -D}),
        for a cache that serves one session at a time: CRIU's socket and
        the fetch socket are made in it, unless C{local} names CRIU's.
    @ivar local: A server endpoint string for CRIU's socket instead of the
        one in C{imagesDir}; there is then no fetch socket.
    @ivar sessionsRoot: Instead of C{imagesDir}: serve many sessions at
        once, each in C{sessionsRoot/NAME} (made when the proxy's link names
        session C{NAME}, removed when the session is released).
    @ivar protocol: CRIU's local protocol: C{"stream"} (on
        C{streamer-serve.sock}) or C{"remote"} (on C{img-cache.sock}).
    @ivar link: C{"imgrelay"}, or C{"criu"} to accept a CRIU image-proxy's
        format: images are taken as complete when their announced size
        arrived, and nothing is verified.
    @ivar idleTimeout: Seconds a new connection may take to open its
        exchange: a link's hello, and with C{"remote"} a local
        connection's header and pipe; None for no bound.
    @ivar tls: Certificate, key and CA for a mutually authenticated TLS
        link: only proxies certified by that CA get in. None for plain TCP.
    @ivar socketMode: The permission bits of the sockets the cache makes.
    @ivar limits: Images and bytes per session, local connections at once,
        header and name sizes.
    @ivar resumeTimeout: Seconds a session whose link broke waits for its
        proxy to resume it; then it fails and restores waiting for it are
        told its images do not exist.
    @ivar retain: Seconds a session is kept after its last restore ended,
        so that it can be restored again meanwhile (0: dropped at once).
    @ivar maxSessions: With C{sessionsRoot}, how many sessions may be
        received at once; a link beyond them is refused.
    @ivar maxMemory: The most bytes of images held at once (None: no
        bound). At the bound the cache stops reading the links that bring
        more, and goes on as sessions are released.
    @ivar heartbeat: Seconds between the progress reports the cache sends
        on a quiet link: a proxy that hears nothing for three of them
        takes the link for dead and resumes on a new one (0: none).
    @ivar observability: Progress lines, a stats file, a status fd and an
        HTTP status endpoint.
    @ivar verbose: Log every image, not only those of 1 MiB or more.
    @ivar oneshot: Serve one session (with C{imagesDir} only).
    @ivar restore: Run C{criu restore --stream} itself for each session
        C{imgrelay migrate} sends, leave the restored tree stopped, and
        resume it once the source commits (docs/migrate.md).
    @ivar criu: With C{restore}: the CRIU binary; by default
        C{IMGRELAY_CRIU}, else C{criu} on C{PATH}.
    @ivar restoreArgs: With C{restore}: more arguments for C{criu restore}.
    """

    listen: str
    imagesDir: Optional[str] = None
    local: Optional[str] = None
    sessionsRoot: Optional[str] = None
    protocol: str = attrs.field(default="stream", validator=_oneOf(PROTOCOLS, "protocol"))
    link: str = attrs.field(default="imgrelay", validator=_oneOf(LINKS, "link format"))
    idleTimeout: Optional[float] = attrs.field(default=DEFAULT_IDLE_TIMEOUT, validator=positive)
    tls: Optional[TLSFiles] = None
    socketMode: int = DEFAULT_MODE
    limits: Limits = Limits()
    resumeTimeout: float = attrs.field(default=DEFAULT_RESUME_TIMEOUT, validator=positive)
    retain: float = 0.0
    maxSessions: int = attrs.field(default=DEFAULT_MAX_SESSIONS, validator=positive)
    maxMemory: Optional[int] = attrs.field(default=None, validator=positive)
    heartbeat: float = attrs.field(default=DEFAULT_HEARTBEAT, validator=_notNegative)
    observability: Observability = Observability()
    verbose: bool = False
    oneshot: bool = False
    restore: bool = False
    criu: Optional[str] = attrs.field(default=attrs.Factory(_defaultCriu, takes_self=True))
    restoreArgs: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.restore:
            _checkRestore(self)
        if not 0 <= self.retain < float("inf"):
            raise ValueError(f"--retain: {self.retain!r} is not a number of seconds, 0 or more")
        if self.sessionsRoot is None:
            if self.imagesDir is None and self.local is None:
                raise ValueError("give either an images directory (--images-dir) or a sessions root (--sessions-root)")
            if self.local is None:
                assert self.imagesDir is not None
                _checkDirectory(self.imagesDir, "--images-dir")
            return
        if self.imagesDir is not None:
            raise ValueError("--sessions-root and --images-dir exclude each other")
        if self.local is not None:
            raise ValueError("--sessions-root and --local exclude each other")
        if self.oneshot:
            raise ValueError("--oneshot serves one session: use --images-dir, not --sessions-root")
        if self.link == "criu":
            raise ValueError("--link criu names no session: use --images-dir, not --sessions-root")
        _checkDirectory(self.sessionsRoot, "--sessions-root")

    def localDescription(self) -> Optional[str]:
        """
        @return: The server endpoint string of CRIU's socket: C{local}, the
            protocol's socket in C{imagesDir}, or None with a sessions root
            (each session's directory has its own).
        """
        if self.local is not None or self.imagesDir is None:
            return self.local
        socket = REMOTE_CACHE_SOCKET if self.protocol == "remote" else SERVE_SOCKET
        return localEndpoint(self.imagesDir, socket, self.socketMode)

    @property
    def socketsDir(self) -> Optional[str]:
        """
        @return: Where the sockets other than CRIU's go (the fetch socket):
            the images directory when CRIU's socket is there too, else
            nowhere (None).
        """
        return self.imagesDir if self.local is None else None
