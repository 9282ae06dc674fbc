"""
Tests for L{imgrelay.observe.service}: progress lines on a clock, the end-of-session
record in the log and the stats file, and the status fd's events.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from twisted.application import strports
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.observe.service import Observability, ObservingService, describeAddress
from imgrelay.observe.stats import DaemonStats


class _Live:
    bytes = 0
    open = 0

    def read(self) -> tuple[int, int]:
        return self.bytes, self.open


class ObservingServiceTests(SynchronousTestCase):
    """
    Tests for L{ObservingService}, on a memory reactor and its clock.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.stats = DaemonStats("cache", self.reactor.seconds, "0.1.0")
        self.live = _Live()
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def service(self, **options: Any) -> ObservingService:
        link = strports.service("tcp:7070", Factory(), reactor=self.reactor)
        link.startService()
        service = ObservingService(self.stats, Observability(**options), self.reactor, {"link": link})
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def infos(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["log_level"] == LogLevel.info and text in formatEvent(e)]

    def statusPipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        return r, w

    def test_progressLines(self) -> None:
        """
        Every interval, one line per active session gives its images
        verified and open, bytes and rate over the interval; ended sessions
        get none.
        """
        self.service(progressInterval=5)
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.stats.begin("other", "receiving")
        self.stats.imageVerified(s, "", 10)
        self.live.bytes, self.live.open = 10_000_000, 2
        self.reactor.advance(4.9)
        self.assertEqual(self.infos("images verified"), [])
        self.reactor.advance(0.1)
        lines = [formatEvent(e) for e in self.infos("images verified")]
        self.assertEqual(
            lines,
            ["session mig: 1 images verified, 2 open, 10000000 bytes, 2.0 MB/s",
             "session other: 0 images verified, 0 open, 0 bytes, 0.0 MB/s"],
        )
        self.stats.complete(s)
        self.reactor.advance(5)
        self.assertEqual(len(self.infos("session mig: 1 images verified")), 1)
        self.assertEqual(len(self.infos("session other: 0 images verified")), 2)

    def test_progressOff(self) -> None:
        """
        With an interval of 0 there is no progress line and nothing is
        scheduled.
        """
        self.service(progressInterval=0)
        self.stats.begin("mig", "receiving")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_progressStops(self) -> None:
        """
        Stopping the service stops the progress lines.
        """
        service = self.service(progressInterval=1)
        self.stats.begin("mig", "receiving")
        service.stopService()
        self.reactor.advance(10)
        self.assertEqual(self.infos("images verified"), [])

    def test_endRecordLogged(self) -> None:
        """
        A session's end is one log line with images, bytes, seconds and
        rate, and the whole record (per snapshot too) as a field.
        """
        self.service()
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.stats.imageVerified(s, "1", 4_000_000)
        self.live.bytes = 4_000_000
        self.reactor.advance(2)
        self.stats.complete(s)
        (event,) = self.infos("complete:")
        self.assertEqual(formatEvent(event), "session mig complete: 1 images, 4000000 bytes in 2.000 s (2.0 MB/s)")
        self.assertEqual(event["stats"]["snapshots"], {"1": {"images": 1, "bytes": 4_000_000}})

    def test_statsFile(self) -> None:
        """
        Each session ended appends one JSON line to the stats file.
        """
        path = os.path.join(tempfile.mkdtemp(), "stats.jsonl")
        self.service(statsFile=path)
        a = self.stats.begin("a", "receiving", self.live.read)
        self.live.bytes = 3
        self.stats.imageVerified(a, "", 3)
        self.reactor.advance(1)
        self.stats.complete(a)
        self.stats.fail(self.stats.begin("b", "receiving"), "checksum mismatch", "checksum")
        with open(path) as f:
            records = [json.loads(line) for line in f]
        self.assertEqual(
            [(r["daemon"], r["session"], r["outcome"], r["images"], r["bytes"], r["seconds"], r["error"])
             for r in records],
            [("cache", "a", "complete", 1, 3, 1.0, None), ("cache", "b", "failed", 0, 0, 0.0, "checksum mismatch")],
        )
        self.assertEqual(records[0]["snapshots"], {"": {"images": 1, "bytes": 3}})

    def test_statsFileUnwritable(self) -> None:
        """
        A stats file that cannot be written is logged as an error; the
        session still ends normally.
        """
        self.service(statsFile=os.path.join(tempfile.mkdtemp(), "missing", "stats.jsonl"))
        s = self.stats.begin("a", "receiving")
        self.stats.complete(s)
        errors = [formatEvent(e) for e in self.logs if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("cannot append to the stats file", errors[0])
        self.assertEqual(self.stats.outcomes["complete"], 1)

    def test_statusEvents(self) -> None:
        """
        The status fd gets, one JSON object per line and in order: the
        listening addresses, a session's first image, its completion with
        its record, and another's failure with its cause; each names the
        daemon.
        """
        r, w = self.statusPipe()
        self.service(statusFd=w)
        a = self.stats.begin("a", "receiving")
        self.stats.imageVerified(a, "", 5)
        self.stats.imageVerified(a, "", 5)
        self.stats.complete(a, bytes=10)
        self.stats.fail(self.stats.begin("b", "receiving"), "link lost", "other")
        events = [json.loads(line) for line in os.read(r, 1 << 16).splitlines()]
        self.assertEqual(
            [e["event"] for e in events], ["listening", "first-image", "complete", "failed"]
        )
        self.assertEqual(events[0], {"event": "listening", "daemon": "cache", "link": {"host": "0.0.0.0", "port": 7070}})
        self.assertEqual(events[1], {"event": "first-image", "daemon": "cache", "session": "a"})
        self.assertEqual({e["daemon"] for e in events}, {"cache"})
        self.assertEqual((events[2]["session"], events[2]["stats"]["images"], events[2]["stats"]["bytes"]), ("a", 2, 10))
        self.assertEqual((events[3]["session"], events[3]["cause"]), ("b", "link lost"))

    def test_noStatusFd(self) -> None:
        """
        Without a status fd, events go nowhere and nothing fails.
        """
        service = self.service()
        service.emit({"event": "x"})
        self.stats.complete(self.stats.begin("a", "receiving"))


class DescribeAddressTests(SynchronousTestCase):
    """
    Tests for L{describeAddress}.
    """

    def test_forms(self) -> None:
        """
        TCP addresses give host and port, UNIX ones their path.
        """
        self.assertEqual(describeAddress(IPv4Address("TCP", "127.0.0.1", 9)), {"host": "127.0.0.1", "port": 9})
        self.assertEqual(describeAddress(UNIXAddress(b"/run/x.sock")), {"path": "/run/x.sock"})
        self.assertEqual(describeAddress(UNIXAddress("/run/y.sock")), {"path": "/run/y.sock"})
        self.assertEqual(describeAddress("odd"), {"address": "odd"})
