"""
Tests for L{imgrelay.observe.stats}: per-session counters, rates over a sampling
interval, totals, the status document and the lifecycle events.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.observe.stats import KEEP_ENDED, DaemonStats, SessionStats


class _Live:
    """
    What a probe reads: a session's bytes and open images, set by the test.
    """

    bytes = 0
    open = 0

    def read(self) -> tuple[int, int]:
        return self.bytes, self.open


class DaemonStatsTests(SynchronousTestCase):
    """
    Tests for L{DaemonStats}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.held = 0
        self.stats = DaemonStats("cache", self.clock.seconds, "9.9", held=lambda: self.held)
        self.events: list[tuple[str, str]] = []
        self.stats.addListener(lambda event, s: self.events.append((event, s.name)))
        self.live = _Live()

    def test_empty(self) -> None:
        """
        A daemon with no session yet reports zero totals, every outcome and
        error kind at 0, and its uptime.
        """
        self.clock.advance(12.5)
        self.held = 7
        self.assertEqual(
            self.stats.status(),
            {
                "daemon": "cache",
                "version": "9.9",
                "uptime": 12.5,
                "sessions": [],
                "totals": {
                    "bytes": 0,
                    "link_bytes": 0,
                    "images": 0,
                    "sessions": {"complete": 0, "failed": 0},
                    "errors": {"checksum": 0, "protocol": 0, "other": 0},
                    "active": 0,
                    "held": 7,
                },
            },
        )

    def test_activeSession(self) -> None:
        """
        An active session's entry reads its live bytes and open images, the
        images verified so far, the seconds since it began and its snapshot
        ids (the unnamed snapshot of C{--stream} left out).
        """
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.stats.imageVerified(s, "1", 100)
        self.stats.imageVerified(s, "1", 50)
        self.stats.imageVerified(s, "2", 10)
        self.stats.imageVerified(s, "", 1)
        self.live.bytes, self.live.open = 400, 2
        self.clock.advance(3)
        status = self.stats.status()
        self.assertEqual(
            status["sessions"],
            [{"name": "mig", "state": "receiving", "images": 4, "open": 2, "bytes": 400, "link_bytes": None,
              "ratio": None, "rate": 0.0, "seconds": 3.0, "error": None, "snapshots": ["1", "2"]}],
        )
        self.assertEqual((status["totals"]["bytes"], status["totals"]["images"], status["totals"]["active"]),
                         (400, 4, 1))
        self.assertEqual(json.loads(json.dumps(status)), status)

    def test_rateOverInterval(self) -> None:
        """
        L{DaemonStats.sample} sets each active session's rate to the bytes
        that arrived since the previous sample over the time between them;
        a session that brought nothing in an interval shows 0.
        """
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.live.bytes = 5000
        self.clock.advance(5)
        self.assertEqual(self.stats.sample(), [s])
        self.assertEqual(s.rate, 1000.0)
        self.live.bytes = 6000
        self.clock.advance(2)
        self.stats.sample()
        self.assertEqual(s.rate, 500.0)
        self.clock.advance(5)
        self.stats.sample()
        self.assertEqual(s.rate, 0.0)

    def test_sampleTwiceAtOnce(self) -> None:
        """
        Two samples at the same instant leave the rate as it was.
        """
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.live.bytes = 100
        self.clock.advance(1)
        self.stats.sample()
        self.stats.sample()
        self.assertEqual(s.rate, 100.0)

    def test_firstImageEvent(self) -> None:
        """
        The first image verified in a session, and only the first, is told
        to the listeners.
        """
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.assertEqual(self.events, [])
        self.stats.imageVerified(s, "", 1)
        self.stats.imageVerified(s, "", 1)
        self.assertEqual(self.events, [("first-image", "mig")])

    def test_complete(self) -> None:
        """
        A completed session moves to the ended ones with its final bytes, no
        rate and nothing open; its record carries images, bytes, seconds,
        average rate and per-snapshot counts; the totals count it.
        """
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.stats.imageVerified(s, "1", 3000)
        self.stats.imageVerified(s, "2", 1000)
        self.live.bytes, self.live.open = 4000, 0
        self.clock.advance(2)
        self.stats.sample()
        self.stats.complete(s)
        self.assertEqual(self.events, [("first-image", "mig"), ("complete", "mig")])
        self.assertIsNone(s.probe)
        self.assertFalse(s.active)
        self.assertEqual(
            s.record(),
            {"session": "mig", "outcome": "complete", "images": 2, "bytes": 4000, "seconds": 2.0,
             "rate": 2000.0, "error": None, "ended": 1002.0, "link_bytes": None, "ratio": None,
             "snapshots": {"1": {"images": 1, "bytes": 3000}, "2": {"images": 1, "bytes": 1000}}},
        )
        # Bytes arriving later on the live object no longer count.
        self.live.bytes = 9999
        status = self.stats.status()
        self.assertEqual(status["sessions"][0]["state"], "complete")
        self.assertEqual(status["sessions"][0]["rate"], 0.0)
        self.assertEqual(status["totals"]["bytes"], 4000)
        self.assertEqual(status["totals"]["sessions"], {"complete": 1, "failed": 0})
        self.assertEqual(status["totals"]["active"], 0)

    def test_completeWithCounts(self) -> None:
        """
        A session counted only at its end (the proxy's) takes its images
        and bytes from the outcome; the image total grows by them.
        """
        s = self.stats.begin("p", "sending")
        self.clock.advance(4)
        self.stats.complete(s, images=7, bytes=800)
        self.assertEqual((s.images, s.bytes, s.averageRate()), (7, 800, 200.0))
        self.assertEqual((self.stats.images, self.stats.bytes), (7, 800))

    def test_fail(self) -> None:
        """
        A failed session carries its cause; the error is counted under its
        kind and the session under C{failed}; the listeners are told.
        """
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.live.bytes = 10
        self.stats.fail(s, "image 'a' refused: checksum mismatch", "checksum")
        self.assertEqual(self.events, [("failed", "mig")])
        self.assertEqual(s.record()["error"], "image 'a' refused: checksum mismatch")
        totals = self.stats.status()["totals"]
        self.assertEqual(totals["errors"], {"checksum": 1, "protocol": 0, "other": 0})
        self.assertEqual(totals["sessions"], {"complete": 0, "failed": 1})
        self.assertEqual(totals["bytes"], 10)

    def test_endTwice(self) -> None:
        """
        A session's end is counted once.
        """
        s = self.stats.begin("mig", "receiving", self.live.read)
        self.stats.fail(s, "one", "protocol")
        self.stats.fail(s, "two", "protocol")
        self.stats.complete(s)
        self.assertEqual(self.stats.outcomes, {"complete": 0, "failed": 1})
        self.assertEqual(self.stats.errors["protocol"], 1)
        self.assertEqual(s.error, "one")
        self.assertEqual(self.events, [("failed", "mig")])

    def test_bytesMonotonic(self) -> None:
        """
        The byte total counts active sessions' live bytes and ended
        sessions' final bytes: it never goes down as a session ends.
        """
        a = self.stats.begin("a", "receiving", self.live.read)
        self.live.bytes = 100
        self.stats.refresh()
        before = self.stats.bytes
        self.stats.complete(a)
        self.assertEqual((before, self.stats.bytes), (100, 100))

    def test_keepsLastEnded(self) -> None:
        """
        Only the last L{KEEP_ENDED} ended sessions stay in the document
        (before the active ones), while the totals count them all.
        """
        for i in range(KEEP_ENDED + 3):
            self.stats.complete(self.stats.begin(f"s{i}", "receiving"))
        active = self.stats.begin("now", "receiving")
        names = [s["name"] for s in self.stats.status()["sessions"]]
        self.assertEqual(names, [f"s{i}" for i in range(3, KEEP_ENDED + 3)] + ["now"])
        self.assertEqual(self.stats.outcomes["complete"], KEEP_ENDED + 3)
        self.assertTrue(active.active)


class SessionStatsTests(SynchronousTestCase):
    """
    Tests for L{SessionStats} on its own.
    """

    def test_averageRateWhileActive(self) -> None:
        """
        A session still in progress has no average rate yet.
        """
        s = SessionStats("x", "receiving", 10.0, bytes=50)
        self.assertEqual(s.averageRate(), 0.0)
        self.assertEqual(s.seconds(15.0), 5.0)

    def test_noTime(self) -> None:
        """
        A session that ended the instant it began has rate 0, not an error.
        """
        s = SessionStats("x", "complete", 10.0, ended=10.0, bytes=50)
        self.assertEqual(s.averageRate(), 0.0)


class LinkBytesTests(SynchronousTestCase):
    """
    What a session's image bytes came to on the link, and the ratio.
    """

    def test_ratio(self) -> None:
        """
        A session whose 4000 image bytes went as 1000 on the link has a
        ratio of 4, in its status, its record and the totals; the reading
        stops once it is over.
        """
        clock = Clock()
        stats = DaemonStats("proxy", clock.seconds, "9.9")
        onLink = [0]
        s = stats.begin("mig", "sending", lambda: (4000, 0), lambda: onLink[0])
        self.assertIsNone(stats.status()["sessions"][0]["ratio"])
        onLink[0] = 1000
        [entry] = stats.status()["sessions"]
        self.assertEqual((entry["link_bytes"], entry["ratio"]), (1000, 4.0))
        stats.complete(s)
        onLink[0] = 5
        self.assertEqual((s.record()["link_bytes"], s.record()["ratio"]), (1000, 4.0))
        self.assertEqual(stats.status()["totals"]["link_bytes"], 1000)
        self.assertEqual(stats.linkBytes, 1000)
