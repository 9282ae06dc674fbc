# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugins' options and services: C{twistd imgrelay-proxy} and
C{twistd imgrelay-cache}.
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Union

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from imgrelay.cache.service import CacheService
import attrs

from imgrelay.config import CacheConfig, ProxyConfig
from imgrelay.core.limits import Limits, parseSize
from imgrelay.core.store import Session, SessionState
from imgrelay.daemon import Daemon, stopWithStatus
from imgrelay.observe.service import Observability
from imgrelay.proxy.service import ProxyService
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.transport.localsock import parseMode
from imgrelay.transport.tls import TLSFiles, load

log = Logger(namespace="imgrelay")


def _default(config: type, field: str) -> Any:
    # Every default is the config's: the command line only shows it.
    return attrs.fields_dict(config)[field].default


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
        ["protocol", "p", _default(CacheConfig, "protocol"),
         "CRIU's local protocol: stream (criu --stream) or remote (criu --remote)."],
        ["link", None, _default(CacheConfig, "link"), "Link format: imgrelay (verified), or criu (CRIU's "
         "image-proxy/image-cache format: no acknowledgements, no final handshake, no checksums)."],
        ["max-local-connections", None, Limits().maxLocalConnections, "Local (CRIU) connections open at once.", int],
        ["max-header-size", None, Limits().maxHeaderSize, "Longest message header taken from a peer (the link or "
         "CRIU), in bytes.", int],
        ["max-name-length", None, Limits().maxNameLength, "Longest image name taken, in UTF-8 bytes.", int],
        ["socket-mode", None, _default(CacheConfig, "socketMode"), "Octal permission bits of the local sockets (in "
         "--images-dir, or in each session's directory under --sessions-root).", parseMode],
        ["idle-timeout", None, _default(CacheConfig, "idleTimeout"), "Seconds a new connection may take to open its "
         "exchange: a link's hello (and, on the proxy, the cache's answer), or with --protocol remote a local "
         "connection's header and pipe.", float],
        ["progress-interval", None, Observability().progressInterval,
         "Seconds between progress lines, one per session in progress (0: none).", float],
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

    _config: Any = None

    def postOptions(self) -> None:
        """
        Check what only a command line can get wrong (a missing option, an
        endpoint string, a file), then build the config, which checks the
        values together.
        """
        if self["images-dir"] is None and self.get("sessions-root") is None:
            raise usage.UsageError("--images-dir is required: the directory given to CRIU with -D")
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
        if self["local"]:
            _checkEndpoint(serverFromString, self["local"], "--local")
        statsFile = self["stats-file"]
        if statsFile is not None:
            if not os.path.isdir(os.path.dirname(os.path.abspath(statsFile))):
                raise usage.UsageError(f"--stats-file: the directory of {statsFile!r} does not exist")
            self["stats-file"] = os.path.abspath(statsFile)
        self._checkEndpoints()
        try:
            self._config = self._makeConfig()
        except ValueError as e:
            raise usage.UsageError(str(e))

    def _checkEndpoints(self) -> None:
        raise NotImplementedError()

    def _makeConfig(self) -> Any:
        raise NotImplementedError()

    def _common(self) -> dict[str, Any]:
        return dict(
            imagesDir=self["images-dir"], local=self["local"] or None, protocol=self["protocol"],
            link=self["link"], idleTimeout=self["idle-timeout"], tls=self["tls"], socketMode=self["socket-mode"],
            limits=self.limits(), observability=self.observability(), verbose=bool(self["verbose"]),
            oneshot=bool(self["oneshot"]),
        )

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
        ["window", None, _default(ProxyConfig, "window"), "Bytes of a session held until the cache acknowledges "
         "them, to send again after a broken link; CRIU's pipes wait while it is full (at least 4194304).", int],
        ["reconnect-timeout", None, _default(ProxyConfig, "reconnectTimeout"), "After a broken link, reconnect with "
         "back-off and resume the session; fail it after this many seconds without a link the cache accepted.",
         float],
        ["compress", None, _default(ProxyConfig, "compress"), "Link compression: auto (Zstandard chunk by chunk "
         "while the link is the bottleneck and the data shrinks), zstd, lz4 (every chunk that shrinks), or none."],
    ]

    def config(self) -> ProxyConfig:
        """
        @return: The proxy's config, built once by L{parseOptions}.
        """
        assert isinstance(self._config, ProxyConfig), "parseOptions first"
        return self._config

    def _checkEndpoints(self) -> None:
        if not self["connect"]:
            raise usage.UsageError("--connect is required: the cache's link endpoint, e.g. tcp:host=dest:port=7070")
        _checkEndpoint(clientFromString, self["connect"], "--connect")

    def _makeConfig(self) -> ProxyConfig:
        extra: dict[str, Any] = {}
        if self["session"] is not None:
            extra["sessionName"] = self["session"]
        if self["tls-hostname"] is not None:
            extra["tlsHostname"] = self["tls-hostname"]
        return ProxyConfig(
            connect=self["connect"], window=self["window"], reconnectTimeout=self["reconnect-timeout"],
            compress=self["compress"], **self._common(), **extra,
        )


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
        ["max-images", None, Limits().maxImages, "Images one session may hold.", int],
        ["max-session-bytes", None, Limits().maxSessionBytes, "Bytes one session may hold.", int],
        ["max-memory", None, None, "The most bytes of images held at once (suffixes K, M, G, T: powers of 1024); "
         "at the bound no link is read until memory is freed. Default: no bound.", parseSize],
        ["resume-timeout", None, _default(CacheConfig, "resumeTimeout"), "Seconds a session whose link broke waits "
         "for its proxy to resume it; then it fails and restores are told its images do not exist.", float],
        ["max-sessions", None, _default(CacheConfig, "maxSessions"), "With --sessions-root: sessions received at "
         "once.", int],
        ["retain", None, _default(CacheConfig, "retain"), "Seconds a session is kept after its last restore ended, "
         "to be restored again meanwhile.", float],
        ["heartbeat", None, _default(CacheConfig, "heartbeat"), "Seconds between the cache's word to a quiet "
         "link; a proxy that hears nothing for three of them drops the link and resumes the session on a new one "
         "(0: none).", float],
        ["criu", None, None, "With --restore: the CRIU binary (default: $IMGRELAY_CRIU, else criu on PATH)."],
        ["restore-args", None, "", "With --restore: more arguments for criu restore, as a shell would split them."],
    ]
    optFlags = [
        *_Options.optFlags,
        ["restore", None, "Restore each session from imgrelay migrate here (criu restore --stream), leave the "
         "tree stopped, and resume it once the source commits."],
    ]

    def config(self) -> CacheConfig:
        """
        @return: The cache's config, built once by L{parseOptions}.
        """
        assert isinstance(self._config, CacheConfig), "parseOptions first"
        return self._config

    def _checkEndpoints(self) -> None:
        if not self["listen"]:
            raise usage.UsageError("--listen is required: the server endpoint for links, e.g. tcp:7070")
        _checkEndpoint(serverFromString, self["listen"], "--listen")

    def _makeConfig(self) -> CacheConfig:
        return CacheConfig(
            listen=self["listen"], sessionsRoot=self["sessions-root"], resumeTimeout=self["resume-timeout"],
            retain=self["retain"], maxSessions=self["max-sessions"], maxMemory=self["max-memory"],
            heartbeat=self["heartbeat"], **self._common(), **self._restore(),
        )

    def _restore(self) -> dict[str, Any]:
        if not self["restore"]:
            if self["criu"] is not None or self["restore-args"]:
                raise usage.UsageError("--criu and --restore-args go with --restore")
            return {}
        try:
            args = tuple(shlex.split(self["restore-args"]))
        except ValueError as e:
            raise usage.UsageError(f"--restore-args: {e}") from None
        extra: dict[str, Any] = {"restore": True, "restoreArgs": args}
        if self["criu"] is not None:
            extra["criu"] = self["criu"]
        return extra


def _checkEndpoint(parse: Any, description: str, option: str) -> None:
    # Parsing an endpoint string needs no running reactor and opens nothing.
    from twisted.internet import reactor

    try:
        parse(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"{option}: {description!r} is not a valid endpoint: {e}")


def _reactorOr(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        return globalReactor
    return reactor


def makeProxyService(options: ProxyOptions, reactor: Any = None) -> IService:
    """
    Build the proxy from its options; with C{--oneshot}, stop after the
    first session.
    """
    reactor = _reactorOr(reactor)
    service = ProxyService(options.config(), reactor)
    log.info("imgrelay-proxy: session name {session}", session=service.sessionName)
    if options["oneshot"]:
        service.addSessionObserver(lambda result: _proxyOneshot(reactor, result))
    return Daemon("imgrelay-proxy", service)


def _proxyOneshot(reactor: Any, result: Union[SessionOutcome, Failure]) -> None:
    if isinstance(result, Failure):
        log.error("imgrelay-proxy: session failed, exiting 1: {reason}", reason=result.getErrorMessage())
        stopWithStatus(reactor, 1)
    else:
        log.info("imgrelay-proxy: session {session} confirmed by the cache, exiting", session=result.name)
        stopWithStatus(reactor, 0)


def makeCacheService(options: CacheOptions, reactor: Any = None) -> IService:
    """
    Build the cache from its options; with C{--oneshot}, stop once a
    session is over.
    """
    reactor = _reactorOr(reactor)
    service = CacheService(options.config(), reactor)
    if options["oneshot"] and service.restores is not None:
        # The restore is the session's reader: the migration is over once
        # the restored tree runs, or is given up.
        def resolved(outcome: tuple[str, str]) -> None:
            # Exit once the links closed: the last answer reached the source.
            service.whenLinksClosed().addCallback(lambda _: _restoredOneshot(reactor, *outcome))

        service.restores.addResolvedObserver(resolved)
    elif options["oneshot"]:

        def released(session: Session) -> None:
            # Exit once the link closed: its last answer reached the proxy.
            service.whenLinksClosed().addCallback(lambda _: _cacheOneshot(reactor, session))

        service.addSessionObserver(released)
    return Daemon("imgrelay-cache", service)


def _restoredOneshot(reactor: Any, session: str, how: str) -> None:
    if how == "running":
        log.info("imgrelay-cache: session {session} restored and resumed, exiting", session=session)
        stopWithStatus(reactor, 0)
    else:
        log.error("imgrelay-cache: session {session} not resumed here ({how}), exiting 1", session=session, how=how)
        stopWithStatus(reactor, 1)


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
