# -*- test-case-name: tests.cache.test_verdicts -*-
"""
A cache that restores the process itself (C{--restore}): L{RestoreJobs}
starts a L{RestoreJob} for each session C{imgrelay migrate} sends (link
protocol version 2), and serves its verdict link (L{VerdictLink}): the
restore's L{Verdict}, then the source's C{Commit} (resume the restored
tree) or C{Abort} (kill it), answered with C{Resolved}.

The rules that keep the process in exactly one place (docs/migrate.md):

  - the restored tree stays stopped until a C{Commit};
  - a verdict that reached no verdict link within C{timeout} seconds of
    the restore's end means the source never heard it and has resumed its
    own copy: the restored tree is killed;
  - a verdict delivered and then no C{Commit} or C{Abort} within
    C{timeout}: the source may have killed its copy (and its commit was
    lost) or may have resumed it (and its abort was lost). The tree stays
    stopped, and the cache says loudly where it waits and how to finish
    (C{imgrelay resolve}).
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Sequence

from twisted.internet.interfaces import IDelayedCall, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from imgrelay.cache.restorejob import RestoreJob, RestoreOutcome
from imgrelay.core.errors import ProtocolError
from imgrelay.core.observers import Observers
from imgrelay.wire.framing import FramingError, HeaderReceived
from imgrelay.wire.link import VERDICT_VERSION, CacheMessage, frame, proxyMessageFramer
from imgrelay.wire.pb import link_pb2


class RestoreJobs:
    """
    See the module docstring.

    @ivar jobs: Each session's restore, by name, with its resume token.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, criu: str, args: Sequence[str], imagesDirOf: Callable[[str], str],
        clock: Callable[[], float], timeout: float, makeJob: Callable[..., RestoreJob] = RestoreJob,
    ) -> None:
        """
        @param criu: The CRIU binary.
        @param args: More arguments for each C{criu restore}.
        @param imagesDirOf: Where a session is served, by its name.
        @param clock: The time.
        @param timeout: Seconds a verdict waits for its link, and a
            delivered verdict for the source's answer.
        @param makeJob: Makes each restore (L{RestoreJob}'s signature).
        """
        self._makeJob = makeJob
        self._reactor = reactor
        self._criu = criu
        self._args = list(args)
        self._imagesDirOf = imagesDirOf
        self.clock = clock
        self.timeout = timeout
        self.jobs: dict[str, tuple[bytes, RestoreJob]] = {}
        self._timers: dict[str, IDelayedCall] = {}
        self._delivered: set[str] = set()
        self._resolvedObservers: Observers[tuple[str, str]] = Observers()

    def addResolvedObserver(self, observer: Callable[[tuple[str, str]], None]) -> None:
        """
        Call C{observer} with (session, how) once each restore is over:
        C{"running"} (committed), C{"killed"}, C{"failed"} (the restore
        failed), or C{"stopped"} (no answer from the source: left stopped).
        """
        self._resolvedObservers.add(observer)

    def checkHello(self, hello: link_pb2.Hello) -> None:
        """
        Refuse a data link that would never take a verdict.

        @raise ProtocolError: For a proxy that speaks version 1.
        """
        if hello.version < VERDICT_VERSION:
            raise ProtocolError(
                "this cache restores the process itself (--restore) and takes sessions from imgrelay migrate "
                f"(link protocol version {VERDICT_VERSION}); this proxy speaks version {hello.version}"
            )

    def start(self, name: str, token: bytes) -> RestoreJob:
        """
        A session from C{imgrelay migrate} began: restore it.
        """
        old = self.jobs.pop(name, None)
        if old is not None:
            old[1].abort("a new session of the same name began")
        # Whatever became of the last one's verdict, this one's is new.
        self._delivered.discard(name)
        self._disarm(name)
        job = self._makeJob(self._reactor, self._criu, self._imagesDirOf(name), self._args, name, self.clock,
                            self.clock())
        self.jobs[name] = (token, job)
        job.whenDecided().addCallback(lambda outcome: self._decided(name, job, outcome))
        job.start()
        return job

    def _decided(self, name: str, job: RestoreJob, outcome: RestoreOutcome) -> None:
        if not outcome.restored:
            self._resolved(name, "failed")
        else:
            self._arm(name, lambda: self._unheard(name, job))

    def _arm(self, name: str, fire: Callable[[], None]) -> None:
        self._disarm(name)
        self._timers[name] = self._reactor.callLater(self.timeout, fire)

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _unheard(self, name: str, job: RestoreJob) -> None:
        self._timers.pop(name, None)
        if name in self._delivered:
            outcome = job.outcome
            assert outcome is not None
            self.log.error(
                "session {session}: no commit or abort from the source within {timeout:g} s of the verdict. "
                "The restored tree {pid} waits here, STOPPED. If the source says the process is no longer "
                "there, resume it: imgrelay resolve --resume {pid}; if the source kept it: imgrelay resolve "
                "--kill {pid}", session=name, timeout=self.timeout, pid=outcome.pid,
            )
            self._resolved(name, "stopped")
        else:
            job.abort(f"no verdict link from the source within {self.timeout:g} s (it keeps its copy)")
            self._resolved(name, "killed")

    def _resolved(self, name: str, how: str) -> None:
        self._disarm(name)
        self._resolvedObservers.tell((name, how))

    def verdictLink(self, hello: link_pb2.Hello, transport: ITransport) -> VerdictLink:
        """
        A verdict link connected.

        @raise ProtocolError: If no restore of that session (and token) is
            known here.
        """
        known = self.jobs.get(hello.session)
        if known is None or not hmac.compare_digest(known[0], hello.resume_token):
            raise ProtocolError(f"no restore of session {hello.session!r} here")
        return VerdictLink(self, hello.session, known[1], transport)

    def delivered(self, name: str, job: RestoreJob) -> None:
        """
        The verdict reached a link: now wait for the source's answer.
        """
        self._delivered.add(name)
        if job.resolved is None:
            self._arm(name, lambda: self._unheard(name, job))

    def answered(self, name: str, job: RestoreJob, commit: bool) -> None:
        """
        The source committed or aborted.
        """
        if commit:
            job.commit()
        else:
            job.abort("the source aborted")
        self._resolved(name, job.resolved or "killed")

    def stop(self) -> None:
        """
        The cache stops: restores still running are killed, and trees not
        yet committed with them.
        """
        for name, (_, job) in list(self.jobs.items()):
            if job.resolved is None and name not in self._delivered:
                job.abort("the cache is stopping")
            self._disarm(name)


class VerdictLink:
    """
    One verdict connection on the cache (see the module docstring).
    """

    log = Logger()

    def __init__(self, jobs: RestoreJobs, name: str, job: RestoreJob, transport: ITransport) -> None:
        self._jobs = jobs
        self._name = name
        self._job = job
        self._transport = transport
        self._framer = proxyMessageFramer()
        self._open = True
        self._send(CacheMessage(accept=link_pb2.Accept(restores=True)))
        job.whenDecided().addCallback(self._verdict)

    def _send(self, message: CacheMessage) -> None:
        if self._open:
            self._transport.write(frame(message))

    def _verdict(self, outcome: RestoreOutcome) -> None:
        if not self._open:
            return
        self._send(CacheMessage(verdict=link_pb2.Verdict(
            restored=outcome.restored, pid=outcome.pid, status=outcome.status, reason=outcome.reason,
            log_tail=outcome.logTail, seconds=outcome.seconds,
        )))
        if outcome.restored:
            self._jobs.delivered(self._name, self._job)
            if self._job.resolved is not None:
                # Answered already, on an earlier link whose answer was lost.
                self._resolved()

    def _resolved(self) -> None:
        self._send(CacheMessage(resolved=link_pb2.Resolved(
            running=self._job.resolved == "running", seconds=self._jobs.clock() - self._job.started,
        )))

    def dataReceived(self, data: bytes) -> None:
        """
        The source's C{Commit} or C{Abort}.
        """
        try:
            for event in self._framer.feed(data):
                if not isinstance(event, HeaderReceived):
                    raise ProtocolError("a payload on a verdict link")
                kind = event.message.WhichOneof("kind")
                outcome = self._job.outcome
                if kind == "abort" or (kind == "commit" and outcome is not None and outcome.restored):
                    # An abort may come before the verdict: the source gave
                    # up waiting, and keeps its copy.
                    if self._job.resolved is None:
                        self._jobs.answered(self._name, self._job, kind == "commit")
                    self._resolved()
                else:
                    raise ProtocolError(f"unexpected {kind} on the verdict link")
        except (FramingError, ProtocolError) as e:
            self.log.error("session {session}: verdict link: {error}", session=self._name, error=str(e))
            self._open = False
            self._transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        """
        The source may dial again; the timers still run.
        """
        self._open = False
