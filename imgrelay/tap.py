# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugins' options and services: C{twistd imgrelay-proxy} and
C{twistd imgrelay-cache}.
"""

from __future__ import annotations

import os
from typing import Any, Union

from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from imgrelay.cache.service import cacheService
from imgrelay.cache.resume import DEFAULT_RESUME_TIMEOUT
from imgrelay.daemon import stopWithStatus
from imgrelay.core.limits import Limits, parseSize
from imgrelay.proxy.stream import DEFAULT_WINDOW, MIN_WINDOW
from imgrelay.transport.localsock import DEFAULT_MODE, UnsafeDirectory, checkDirectory, parseMode
from imgrelay.observe.service import Observability
from imgrelay.proxy.service import LINKS, PROTOCOLS, ProxyService, defaultSessionName, proxyService
from imgrelay.proxy.session import SessionOutcome
from imgrelay.proxy.reconnect import DEFAULT_GIVE_UP
from imgrelay.cache.registry import DEFAULT_MAX_SESSIONS
from imgrelay.core.store import Session, SessionState
from imgrelay.transport.tls import TLSFiles, hostOf, load

log = Logger(namespace="imgrelay")


def _protocol(value: str) -> str:
    if value not in PROTOCOLS:
        raise ValueError(f"{value!r} is not one of: {', '.join(PROTOCOLS)}")
    return value


def _link(value: str) -> str:
    if value not in LINKS:
        raise ValueError(f"{value!r} is not one of: {', '.join(LINKS)}")
    return value


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value!r} is not a positive whole number")
    return number


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return seconds


def _window(value: str) -> int:
    window = int(value)
    if window < MIN_WINDOW:
        raise ValueError(f"{value!r} is under the smallest window, {MIN_WINDOW} bytes")
    return window


def _retainSeconds(value: str) -> float:
    seconds = float(value)
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{value!r} is not a number of seconds, 0 or more")
    return seconds


def _interval(value: str) -> float:
    seconds = float(value)
    if not seconds >= 0:
        raise ValueError(f"{value!r} is not a number of seconds (0 or more)")
    return seconds


def _openFd(value: str) -> int:
    fd = int(value)
    if fd < 0:
        raise ValueError(f"{value!r} is not a file descriptor")
    try:
        os.fstat(fd)
    except OSError:
        raise ValueError(f"file descriptor {fd} is not open") from None
    return fd


def _imagesDir(value: str) -> str:
    if not os.path.isdir(value):
        raise ValueError(f"{value!r} is not a directory")
    return os.path.abspath(value)


class _Options(usage.Options):
    optParameters = [
        ["tls-cert", None, None, "PEM certificate of this daemon, for a TLS link with mutual authentication."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["tls-ca", None, None, "PEM certificate of the CA that signs the peer's certificate."],
        ["protocol", "p", "stream", "CRIU's local protocol: stream (criu --stream) or remote (criu --remote).", _protocol],
        ["link", None, "imgrelay", "Link format: imgrelay (verified), or criu (CRIU's image-proxy/image-cache format: "
         "no acknowledgements, no final handshake, no checksums).", _link],
        ["max-local-connections", None, Limits().maxLocalConnections, "Local (CRIU) connections open at once.", _positive],
        ["max-header-size", None, Limits().maxHeaderSize, "Longest message header taken from a peer (the link or "
         "CRIU), in bytes.", _positive],
        ["max-name-length", None, Limits().maxNameLength, "Longest image name taken, in UTF-8 bytes.", _positive],
        ["socket-mode", None, DEFAULT_MODE, "Octal permission bits of the local sockets (in --images-dir, or in each "
         "session's directory under --sessions-root).", parseMode],
        ["idle-timeout", None, 30.0, "Seconds a new connection may take to open its exchange: a link's hello (and, "
         "on the proxy, the cache's answer), or with --protocol remote a local connection's header and pipe.", _seconds],
        ["progress-interval", None, Observability().progressInterval,
         "Seconds between progress lines, one per session in progress (0: none).", _interval],
        ["stats-file", None, None, "Append one JSON line per session ended to this file."],
        ["status-fd", None, None, "Write JSON lifecycle events (listening, first-image, complete, failed) to this "
         "open file descriptor, one per line.", _openFd],
        ["http", None, None, "Server endpoint for GET /status (JSON) and /metrics (Prometheus), "
         "e.g. tcp:9180:interface=127.0.0.1 (off by default)."],
    ]
    optFlags = [
        ["oneshot", None, "Serve one session, then exit: 0 if it succeeded, 1 if not."],
        ["verbose", "v", "Log every image (by default only images of 1 MiB or more get a line)."],
    ]

    def postOptions(self) -> None:
        self._checkDirectory()
        given = [self[k] is not None for k in ("tls-cert", "tls-key", "tls-ca")]
        self["tls"] = None
        if any(given):
            if not all(given):
                raise usage.UsageError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
            files = TLSFiles(self["tls-cert"], self["tls-key"], self["tls-ca"])
            try:
                load(files)
            except ValueError as e:
                raise usage.UsageError(str(e))
            self["tls"] = files
        if self["http"]:
            _checkEndpoint(serverFromString, self["http"], "--http")
        statsFile = self["stats-file"]
        if statsFile is not None:
            if not os.path.isdir(os.path.dirname(os.path.abspath(statsFile))):
                raise usage.UsageError(f"--stats-file: the directory of {statsFile!r} does not exist")
            self["stats-file"] = os.path.abspath(statsFile)

    def limits(self) -> Limits:
        """
        @return: The limits given (the cache's per-session ones too).
        """
        return Limits(
            maxImages=self.get("max-images", Limits().maxImages),
            maxSessionBytes=self.get("max-session-bytes", Limits().maxSessionBytes),
            maxLocalConnections=self["max-local-connections"],
            maxHeaderSize=self["max-header-size"],
            maxNameLength=self["max-name-length"],
        )

    def observability(self) -> Observability:
        """
        @return: What the daemon reports besides its log.
        """
        return Observability(
            self["progress-interval"], self["stats-file"], self["status-fd"], self["http"] or None
        )

    def _checkDirectory(self) -> None:
        if self["images-dir"] is None:
            raise usage.UsageError("--images-dir is required: the directory given to CRIU with -D")
        if self["local"] is None:
            try:
                checkDirectory(self["images-dir"])
            except UnsafeDirectory as e:
                raise usage.UsageError(f"--images-dir: {e}")


class ProxyOptions(_Options):
    """
    Options of C{twistd imgrelay-proxy}.
    """

    synopsis = "--images-dir DIR --connect ENDPOINT [options]"
    longdesc = (
        "Relay the images of `criu dump --stream -D DIR` to an imgrelay-cache. CRIU connects "
        "to DIR/streamer-capture.sock; each dump is sent over its own link to the cache."
    )
    optParameters = [
        ["images-dir", "D", None, "The directory CRIU dumps to (criu dump -D).", _imagesDir],
        ["connect", "c", None, "Client endpoint of the cache's link, e.g. tcp:host=dest:port=7070."],
        ["local", None, None, "Server endpoint for CRIU's socket instead of DIR/streamer-capture.sock."],
        ["session", None, None, "Session name sent to the cache (default: HOST-DIRNAME-HASH, logged at start)."],
        ["tls-hostname", None, None, "With TLS: the name the cache's certificate must carry (default: --connect's host)."],
        ["window", None, DEFAULT_WINDOW, "Bytes of a session held until the cache acknowledges them, to send again "
         "after a broken link; CRIU's pipes wait while it is full (at least 4194304).", _window],
        ["reconnect-timeout", None, DEFAULT_GIVE_UP, "After a broken link, reconnect with back-off and resume the "
         "session; fail it after this many seconds without a link the cache accepted.", _seconds],
    ]

    def postOptions(self) -> None:
        """
        Check the options together.
        """
        _Options.postOptions(self)
        if not self["connect"]:
            raise usage.UsageError("--connect is required: the cache's link endpoint, e.g. tcp:host=dest:port=7070")
        _checkEndpoint(clientFromString, self["connect"], "--connect")
        if self["local"]:
            _checkEndpoint(serverFromString, self["local"], "--local")
        if self["session"] is None:
            self["session"] = defaultSessionName(self["images-dir"])
        if self["tls"] is not None and not (self["tls-hostname"] or hostOf(self["connect"])):
            raise usage.UsageError("with TLS, give --tls-hostname: the name the cache's certificate carries")


class CacheOptions(_Options):
    """
    Options of C{twistd imgrelay-cache}.
    """

    synopsis = "(--images-dir DIR | --sessions-root ROOT) --listen ENDPOINT [options]"
    longdesc = (
        "Receive images from imgrelay-proxy into memory and serve them to "
        "`criu restore --stream -D DIR` on DIR/streamer-serve.sock. With "
        "--sessions-root, serve many sessions at once, each in ROOT/NAME."
    )
    optParameters = [
        ["images-dir", "D", None, "The directory CRIU restores from (criu restore -D).", _imagesDir],
        ["sessions-root", None, None, "Instead of --images-dir: serve each session in ROOT/NAME, NAME as the "
         "proxy's --session gave it (criu restore -D ROOT/NAME).", _imagesDir],
        ["listen", "l", None, "Server endpoint for links from proxies, e.g. tcp:7070."],
        ["local", None, None, "Server endpoint for CRIU's socket instead of DIR/streamer-serve.sock."],
        ["max-images", None, Limits().maxImages, "Images one session may hold.", _positive],
        ["max-session-bytes", None, Limits().maxSessionBytes, "Bytes one session may hold.", _positive],
        ["max-memory", None, None, "The most bytes of images held at once (suffixes K, M, G, T: powers of 1024); "
         "at the bound no link is read until memory is freed. Default: no bound.", parseSize],
        ["resume-timeout", None, DEFAULT_RESUME_TIMEOUT, "Seconds a session whose link broke waits for its proxy to "
         "resume it; then it fails and restores are told its images do not exist.", _seconds],
        ["max-sessions", None, DEFAULT_MAX_SESSIONS, "With --sessions-root: sessions received at once.", _positive],
        ["retain", None, 0.0, "Seconds a session is kept after its last restore ended, to be restored "
         "again meanwhile.", _retainSeconds],
    ]

    def _checkDirectory(self) -> None:
        root = self["sessions-root"]
        if root is None:
            _Options._checkDirectory(self)
            return
        for clash in ("images-dir", "local"):
            if self[clash] is not None:
                raise usage.UsageError(f"--sessions-root and --{clash} exclude each other")
        if self["oneshot"]:
            raise usage.UsageError("--oneshot serves one session: use --images-dir, not --sessions-root")
        if self["link"] == "criu":
            raise usage.UsageError("--link criu names no session: use --images-dir, not --sessions-root")
        try:
            checkDirectory(root)
        except UnsafeDirectory as e:
            raise usage.UsageError(f"--sessions-root: {e}")

    def postOptions(self) -> None:
        """
        Check the options together.
        """
        _Options.postOptions(self)
        if not self["listen"]:
            raise usage.UsageError("--listen is required: the server endpoint for links, e.g. tcp:7070")
        _checkEndpoint(serverFromString, self["listen"], "--listen")
        if self["local"]:
            _checkEndpoint(serverFromString, self["local"], "--local")


def _checkEndpoint(parse: Any, description: str, option: str) -> None:
    # Parsing an endpoint string needs no running reactor and opens nothing.
    from twisted.internet import reactor

    try:
        parse(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"{option}: {description!r} is not a valid endpoint: {e}")


class _Daemon(MultiService):
    """
    The top service of a twistd daemon: a bind error ends twistd with one
    clear line instead of a traceback.
    """

    def __init__(self, name: str, service: IService) -> None:
        MultiService.__init__(self)
        self._name = name
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint now, or exit naming the one that failed.
        """
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as e:
            if isinstance(e.port, (bytes, str)):
                path = e.port.decode() if isinstance(e.port, bytes) else e.port
                why = str(e.socketError)
                if why == "Cannot acquire lock":
                    why = "another running daemon holds this socket"
                raise SystemExit(f"{self._name}: cannot listen on {path}: {why}")
            raise SystemExit(f"{self._name}: cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}")


def makeProxyService(options: ProxyOptions, reactor: Any = None) -> IService:
    """
    Build the proxy from its options; with C{--oneshot}, stop after the
    first session.
    """
    service = proxyService(
        options["images-dir"], options["connect"], options["session"], options["local"], reactor,
        bool(options["verbose"]), options["protocol"], options["idle-timeout"],
        options["tls"], options["tls-hostname"], options["link"], options["socket-mode"],
        options.limits(), options["window"],
        options["reconnect-timeout"], options.observability(),
    )
    log.info("imgrelay-proxy: session name {session}", session=service.sessionName)
    if options["oneshot"]:
        service.maxSessions = 1
        service.addSessionObserver(lambda result: _proxyOneshot(service, result))
    return _Daemon("imgrelay-proxy", service)


def _proxyOneshot(service: ProxyService, result: Union[SessionOutcome, Failure]) -> None:
    if isinstance(result, Failure):
        log.error("imgrelay-proxy: session failed, exiting 1: {reason}", reason=result.getErrorMessage())
        stopWithStatus(service._reactor, 1)
    else:
        log.info("imgrelay-proxy: session {session} confirmed by the cache, exiting", session=result.name)
        stopWithStatus(service._reactor, 0)


def makeCacheService(options: CacheOptions, reactor: Any = None) -> IService:
    """
    Build the cache from its options; with C{--oneshot}, stop once a
    session is over.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    service = cacheService(
        options["images-dir"], options["listen"], options["local"], reactor, bool(options["verbose"]),
        options["protocol"], options["idle-timeout"], options["tls"], options["link"], options["socket-mode"],
        options.limits(),
        resumeTimeout=options["resume-timeout"], sessionsRoot=options["sessions-root"], retain=options["retain"],
        maxSessions=options["max-sessions"], observability=options.observability(), maxMemory=options["max-memory"],
    )
    if options["oneshot"]:

        def released(session: Session) -> None:
            # Exit once the link closed: its last answer reached the proxy.
            service.whenLinksClosed().addCallback(lambda _: _cacheOneshot(reactor, session))

        service.addSessionObserver(released)
    return _Daemon("imgrelay-cache", service)


def _cacheOneshot(reactor: Any, session: Session) -> None:
    if session.state is SessionState.COMPLETE:
        log.info("imgrelay-cache: session {session} restored, exiting", session=session.name)
        stopWithStatus(reactor, 0)
    else:
        log.error("imgrelay-cache: session {session} failed, exiting 1: {reason}",
                  session=session.name, reason=session.failure)
        stopWithStatus(reactor, 1)


class _Plugin:
    """
    What a L{twisted.application.service.ServiceMaker} looks up by name:
    an C{Options} class and a C{makeService} function.
    """

    def __init__(self, options: type, makeService: Any) -> None:
        self.Options = options
        self.makeService = makeService


#: The C{imgrelay-proxy} plugin's options and service.
proxy = _Plugin(ProxyOptions, makeProxyService)

#: The C{imgrelay-cache} plugin's options and service.
cache = _Plugin(CacheOptions, makeCacheService)
