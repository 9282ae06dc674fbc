"""
Tests for L{imgrelay.observe.logs}: which images get a log line of their own.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.observe.logs import LARGE_IMAGE, logsImage
from imgrelay.proxy.session import ProxySession
from tests.proxy.test_session import FakeLink


class LogsImageTests(SynchronousTestCase):
    """
    L{logsImage} gives large images a line, and every image when verbose.
    """

    def test_threshold(self) -> None:
        """
        Images of L{LARGE_IMAGE} bytes or more are logged; smaller ones only
        when verbose.
        """
        self.assertTrue(logsImage(LARGE_IMAGE, False))
        self.assertFalse(logsImage(LARGE_IMAGE - 1, False))
        self.assertTrue(logsImage(0, True))

    def test_proxySession(self) -> None:
        """
        A proxy session logs a small image's acknowledgement only when
        verbose, a large one's always.
        """
        for verbose, sizes, expected in [(False, [10, LARGE_IMAGE], 1), (True, [10, LARGE_IMAGE], 2)]:
            logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
            session = ProxySession("mig", Clock().seconds, verbose=verbose)
            session.accepted(FakeLink())
            for i, size in enumerate(sizes):
                image = session.openImage("", f"{i}.img")
                image.write(b"x" * size)
                image.close()
                session.acked(image.id)
            acks = [e for e in logs if "acknowledged" in e.get("log_format", "")]
            self.assertEqual(len(acks), expected)


class JSONObserverTests(SynchronousTestCase):
    """
    Tests for L{jsonObserver}, the factory twistd's C{--logger} names.
    """

    def test_jsonLines(self) -> None:
        """
        The observer writes each event as one JSON line on standard output,
        with its fields.
        """
        import io
        import json
        import sys

        from twisted.logger import Logger

        from imgrelay.observe.logs import jsonObserver

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        Logger(namespace="t", observer=jsonObserver()).info("session {session} complete", session="web-1")
        event = json.loads(out.getvalue().strip("\x1e").strip())
        self.assertEqual((event["session"], event["log_format"]), ("web-1", "session {session} complete"))
