"""
Tests for L{imgrelay.cache.verdicts}: the cache's side of the verdict link
and its rules, with a stand-in restore and a clock.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cache.restorejob import RestoreOutcome
from imgrelay.cache.verdicts import RestoreJobs
from imgrelay.core.errors import ProtocolError
from imgrelay.wire.framing import HeaderReceived
from imgrelay.wire.link import CacheMessage, ProxyMessage, cacheMessageFramer, frame
from imgrelay.wire.pb import link_pb2

TOKEN = b"t" * 16


class _Job:
    """
    A restore the test decides.
    """

    def __init__(self, reactor: Any, criu: str, imagesDir: str, args: Any, session: str, clock: Any,
                 started: float) -> None:
        self.imagesDir = imagesDir
        self.started = started
        self.outcome: Optional[RestoreOutcome] = None
        self.resolved: Optional[str] = None
        self.started_ = False
        self._waiting: list[Deferred[RestoreOutcome]] = []

    def start(self) -> None:
        self.started_ = True

    def whenDecided(self) -> Deferred[RestoreOutcome]:
        if self.outcome is not None:
            return succeed(self.outcome)
        d: Deferred[RestoreOutcome] = Deferred()
        self._waiting.append(d)
        return d

    def decide(self, outcome: RestoreOutcome) -> None:
        self.outcome = outcome
        for d in self._waiting:
            d.callback(outcome)

    def commit(self) -> None:
        self.resolved = "running"

    def abort(self, reason: str) -> None:
        self.resolved = "killed"


def _hello(session: str = "web-1", token: bytes = TOKEN, version: int = 2) -> link_pb2.Hello:
    return link_pb2.Hello(version=version, session=session, resume_token=token, verdict=True)


class RestoreJobsTests(SynchronousTestCase):
    """
    The verdict, the source's answer, and the timeouts.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.jobs = RestoreJobs(self.clock, "criu", [], lambda name: f"/run/{name}", self.clock.seconds, 10,
                                makeJob=_Job)
        self.resolved: list[tuple[str, str]] = []
        self.jobs.addResolvedObserver(self.resolved.append)
        self.job: Any = self.jobs.start("web-1", TOKEN)
        self.logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]

    def link(self) -> tuple[Any, StringTransport]:
        transport = StringTransport()
        return self.jobs.verdictLink(_hello(), transport), transport

    def messages(self, transport: StringTransport) -> list[CacheMessage]:
        return [e.message for e in cacheMessageFramer().feed(transport.value()) if isinstance(e, HeaderReceived)]

    def test_started(self) -> None:
        """
        A session's restore is started, on the session's directory.
        """
        self.assertTrue(self.job.started_)
        self.assertEqual(self.job.imagesDir, "/run/web-1")

    def test_versionOne(self) -> None:
        """
        A data link of version 1 is refused, saying why.
        """
        error = self.assertRaises(ProtocolError, self.jobs.checkHello, _hello(version=1))
        self.assertIn("takes sessions from imgrelay migrate", str(error))
        self.jobs.checkHello(_hello())

    def test_unknown(self) -> None:
        """
        A verdict link for another session, or with another token, is
        refused.
        """
        for hello in (_hello("other"), _hello(token=b"x" * 16)):
            self.assertRaises(ProtocolError, self.jobs.verdictLink, hello, StringTransport())

    def test_commit(self) -> None:
        """
        The verdict goes out once decided; a commit resumes the tree, and
        is answered.
        """
        link, transport = self.link()
        self.assertEqual([m.WhichOneof("kind") for m in self.messages(transport)], ["accept"])
        self.job.decide(RestoreOutcome(True, pid=77, seconds=1.0))
        verdict = self.messages(transport)[-1].verdict
        self.assertEqual((verdict.restored, verdict.pid), (True, 77))
        link.dataReceived(frame(ProxyMessage(commit=link_pb2.Commit())))
        self.assertEqual(self.job.resolved, "running")
        self.assertTrue(self.messages(transport)[-1].resolved.running)
        self.assertEqual(self.resolved, [("web-1", "running")])
        # The timers are off.
        self.clock.advance(100)
        self.assertEqual(self.resolved, [("web-1", "running")])

    def test_abortBeforeVerdict(self) -> None:
        """
        An abort before the verdict kills the restore.
        """
        link, transport = self.link()
        link.dataReceived(frame(ProxyMessage(abort=link_pb2.Abort(reason="gave up"))))
        self.assertEqual(self.job.resolved, "killed")
        self.assertFalse(self.messages(transport)[-1].resolved.running)

    def test_commitBeforeVerdict(self) -> None:
        """
        A commit before the verdict is a protocol error: the link closes.
        """
        link, transport = self.link()
        link.dataReceived(frame(ProxyMessage(commit=link_pb2.Commit())))
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(self.job.resolved)

    def test_verdictUnheard(self) -> None:
        """
        A verdict no link carried within the timeout: the source never
        heard it, and kept its copy; the restored tree is killed.
        """
        self.job.decide(RestoreOutcome(True, pid=77))
        self.clock.advance(9)
        self.assertIsNone(self.job.resolved)
        self.clock.advance(1)
        self.assertEqual(self.job.resolved, "killed")
        self.assertEqual(self.resolved, [("web-1", "killed")])

    def test_noAnswer(self) -> None:
        """
        A verdict delivered, then no answer: the tree stays stopped, and
        the cache says where and how to finish.
        """
        link, transport = self.link()
        self.job.decide(RestoreOutcome(True, pid=77))
        link.connectionLost(None)
        self.clock.advance(10)
        self.assertIsNone(self.job.resolved)
        self.assertEqual(self.resolved, [("web-1", "stopped")])
        text = "\n".join(formatEvent(e) for e in self.logs)
        self.assertIn("imgrelay resolve --resume 77", text)

    def test_answerAgain(self) -> None:
        """
        A source whose answer's reply was lost dials again: the verdict and
        the resolution come again.
        """
        first, _ = self.link()
        self.job.decide(RestoreOutcome(True, pid=77))
        first.dataReceived(frame(ProxyMessage(commit=link_pb2.Commit())))
        first.connectionLost(None)
        _, transport = self.link()
        self.assertEqual([m.WhichOneof("kind") for m in self.messages(transport)], ["accept", "verdict", "resolved"])

    def test_failed(self) -> None:
        """
        A failed restore is told as such, and counted as failed.
        """
        _, transport = self.link()
        self.job.decide(RestoreOutcome(False, status=1, reason="criu restore exited with status 1", logTail="E"))
        verdict = self.messages(transport)[-1].verdict
        self.assertEqual((verdict.restored, verdict.reason, verdict.log_tail),
                         (False, "criu restore exited with status 1", "E"))
        self.assertEqual(self.resolved, [("web-1", "failed")])

    def test_sameNameAgain(self) -> None:
        """
        A second session of the same name (imgrelay migrate of the same pid
        again) starts afresh: its verdict, never heard, has its tree killed,
        whatever became of the first one's.
        """
        first, _ = self.link()
        self.job.decide(RestoreOutcome(True, pid=77))
        first.connectionLost(None)
        second = self.jobs.start("web-1", TOKEN)
        self.assertEqual(self.job.resolved, "killed")
        second.decide(RestoreOutcome(True, pid=88))  # type: ignore[attr-defined]
        self.clock.advance(10)
        self.assertEqual(second.resolved, "killed")
        self.assertEqual(self.resolved, [("web-1", "killed")])
