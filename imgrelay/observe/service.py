# -*- test-case-name: tests.observe.test_service -*-
"""
What a daemon tells the world of its sessions, besides its log: progress
lines, an end-of-session record (in the log and in C{--stats-file}), lifecycle
events on C{--status-fd}, and C{--http}'s C{/status} and C{/metrics}.

All of it reads one L{DaemonStats}, which the daemon's feeds
(L{imgrelay.observe.feeds}) fill.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import attrs
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imgrelay.observe.stats import DaemonStats, SessionStats
from imgrelay.observe.statusfd import LineWriter


def _seconds(instance: object, attribute: "attrs.Attribute[float]", value: float) -> None:
    if not 0 <= value < float("inf"):
        raise ValueError(f"--progress-interval: {value!r} is not a number of seconds (0 or more)")


@attrs.frozen
class Observability:
    """
    What a daemon reports beyond its log lines.

    @ivar progressInterval: Seconds between progress lines (one per active
        session); 0 for none. Rates are measured over this interval.
    @ivar statsFile: A file to append one JSON line to per session ended.
    @ivar statusFd: A file descriptor for JSON lifecycle events.
    @ivar http: A server endpoint string for C{/status} and C{/metrics}.
    """

    progressInterval: float = attrs.field(default=5.0, validator=_seconds)
    statsFile: Optional[str] = None
    statusFd: Optional[int] = None
    http: Optional[str] = None


def describeAddress(address: object) -> dict[str, Any]:
    """
    @return: A listening address as JSON: C{host} and C{port}, or C{path}.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        return {"host": address.host, "port": address.port}
    if isinstance(address, UNIXAddress):
        name = address.name
        return {"path": name.decode() if isinstance(name, bytes) else name}
    return {"address": str(address)}


def listeningAddress(service: StreamServerEndpointService) -> Deferred[IAddress]:
    """
    The address a listening service listens on, once it does: with port 0,
    the port the system gave.

    Twisted's service keeps its listening port to itself
    (C{_waitingForPort}); this is the one place imgrelay reads it.

    @param service: A service from C{strports.service}, started.
    @return: A Deferred firing with the listening port's address.
    @raise RuntimeError: If C{service} is not started.
    """
    waiting = service._waitingForPort
    if waiting is None:
        raise RuntimeError("the service is not started")
    d: Deferred[IAddress] = Deferred()

    def listening(port: IListeningPort) -> IListeningPort:
        d.callback(port.getHost())
        return port

    waiting.addCallback(listening)
    return d


def whenListening(service: StreamServerEndpointService) -> Deferred[dict[str, Any]]:
    """
    @return: A Deferred firing with the address C{service} listens on, as
        JSON, once it does (call after it started).
    """
    return listeningAddress(service).addCallback(describeAddress)


class ObservingService(MultiService):
    """
    Progress lines, end-of-session records, status-fd events and the HTTP
    status of one daemon.

    @ivar stats: What it reports on.
    @ivar statusWriter: Writes the status fd's lines, once started with
        one.
    """

    log = Logger()

    def __init__(
        self, stats: DaemonStats, options: Observability, reactor: Any,
        listening: dict[str, StreamServerEndpointService],
    ) -> None:
        """
        @param stats: The daemon's statistics.
        @param options: What to report, and where.
        @param reactor: The reactor (its clock drives the progress lines).
        @param listening: The daemon's listening services by name
            (C{"local"}, C{"link"}): the C{listening} event names their
            addresses once all of them listen.
        """
        MultiService.__init__(self)
        self.stats = stats
        self.options = options
        self._reactor = reactor
        self._listening = dict(listening)
        self.statusWriter: Optional[LineWriter] = None
        self._loop = LoopingCall(self._progress)
        self._loop.clock = reactor
        stats.addListener(self._sessionEvent)
        if options.http is not None:
            from imgrelay.observe.web import statusSite

            http = strports.service(options.http, statusSite(stats, reactor), reactor=reactor)
            http.setServiceParent(self)
            self._listening["http"] = http

    def startService(self) -> None:
        """
        Listen for HTTP, start the progress lines, and tell the status fd
        once every socket listens.
        """
        MultiService.startService(self)
        if self.options.statusFd is not None and self.statusWriter is None:
            self.statusWriter = LineWriter(self.options.statusFd, self._reactor)
        if self.options.progressInterval > 0:
            self._loop.start(self.options.progressInterval, now=False)
        names = list(self._listening)
        d = gatherResults([whenListening(self._listening[n]) for n in names], consumeErrors=True)
        d.addCallback(lambda addresses: self.emit({"event": "listening", **dict(zip(names, addresses))}))
        d.addErrback(lambda f: self.log.failure("cannot report the listening addresses", f))

    def stopService(self) -> Any:
        """
        Stop the progress lines and the HTTP listener. Status lines still go
        out while the reactor runs (sessions fail as links close).
        """
        if self._loop.running:
            self._loop.stop()
        return MultiService.stopService(self)

    def httpAddress(self) -> Deferred[dict[str, Any]]:
        """
        @return: A Deferred firing with the HTTP listener's address once it
            listens (call after L{startService}); useful with port 0.
        """
        return whenListening(self._listening["http"])

    def emit(self, event: dict[str, Any]) -> None:
        """
        Write one event to the status fd, if there is one, naming the daemon
        (C{"proxy"} or C{"cache"}) so that one reader can take both
        daemons' lines.
        """
        if self.statusWriter is not None:
            line = {"event": event["event"], "daemon": self.stats.daemon, **event}
            self.statusWriter.writeLine(json.dumps(line).encode() + b"\n")

    def _progress(self) -> None:
        for session in self.stats.sample():
            self.log.info(
                "session {session}: {images} images verified, {open} open, {bytes} bytes, {mbps:.1f} MB/s",
                session=session.name, images=session.images, open=session.open, bytes=session.bytes,
                mbps=session.rate / 1e6,
            )

    def _sessionEvent(self, event: str, session: SessionStats) -> None:
        if event == "first-image":
            self.emit({"event": event, "session": session.name})
            return
        record = session.record()
        self.log.info(
            "session {session} {outcome}: {images} images, {bytes} bytes in {seconds:.3f} s ({mbps:.1f} MB/s)",
            session=session.name, outcome=event, images=session.images, bytes=session.bytes,
            seconds=record["seconds"], mbps=record["rate"] / 1e6, stats=record,
        )
        self._writeStatsFile(record)
        if event == "complete":
            self.emit({"event": event, "session": session.name, "stats": record})
        else:
            self.emit({"event": event, "session": session.name, "cause": session.error, "stats": record})

    def _writeStatsFile(self, record: dict[str, Any]) -> None:
        path = self.options.statsFile
        if path is None:
            return
        line = json.dumps({"daemon": self.stats.daemon, **record}) + "\n"
        try:
            # One small line per session: a plain append to a local file is
            # a short write, acceptable on the reactor thread.
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            self.log.error("cannot append to the stats file {path}: {error}", path=path, error=e)
