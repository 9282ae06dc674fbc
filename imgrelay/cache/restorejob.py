# -*- test-case-name: tests.cache.test_restorejob -*-
"""
The restore a cache runs itself (C{imgrelay-cache --restore}): for one
session, C{criu restore --stream} against the cache's own serve socket,
the restored tree left stopped (L{RestoreJob}); then the tree is resumed
(the source committed) or killed (it did not).

CRIU runs as a child process of the daemon (C{spawnProcess}), its log, its
pidfile and its statistics in a work directory of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Any, Callable, Optional, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from imgrelay.core.observers import Observers
from imgrelay.local.criurun import ExitStatus, logTail
from imgrelay.local.proctree import killTree, resumeTree, treeOf


@attrs.frozen
class RestoreOutcome:
    """
    How a C{criu restore} ended.

    @ivar restored: It exited 0 and named its tree's root.
    @ivar pid: That root, or 0.
    @ivar status: Its exit status (negative: the signal that killed it).
    @ivar reason: Why it failed, or C{""}.
    @ivar logTail: The last lines of its log that say what went wrong.
    @ivar seconds: From the session's start to the restore's end.
    """

    restored: bool
    pid: int = 0
    status: int = 0
    reason: str = ""
    logTail: str = ""
    seconds: float = 0.0


class RestoreJob:
    """
    See the module docstring.

    @ivar outcome: How the restore ended, once it did.
    @ivar resolved: C{"running"} once resumed, C{"killed"} once killed.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, criu: str, imagesDir: str, args: Sequence[str], session: str,
        clock: Callable[[], float], started: float,
    ) -> None:
        """
        @param criu: The CRIU binary.
        @param imagesDir: Where the cache serves the session (C{-D}).
        @param args: More arguments for C{criu restore}.
        @param session: The session's name, for the log.
        @param clock: The time.
        @param started: When the session started, for the verdict's time.
        """
        self._reactor = reactor
        self._clock = clock
        #: When the session started.
        self.started = started
        self.session = session
        self.workDir = tempfile.mkdtemp(prefix=f"imgrelay-restore-{session[:40]}-")
        self.logPath = os.path.join(self.workDir, "restore.log")
        self._pidfile = os.path.join(self.workDir, "restore.pid")
        self.command = [
            criu, "restore", "--stream", "-D", imagesDir, "-W", self.workDir, "-d", "--leave-stopped",
            "--pidfile", self._pidfile, "-o", self.logPath, "-v4", *args,
        ]
        self.outcome: Optional[RestoreOutcome] = None
        self.resolved: Optional[str] = None
        self._outcomeObservers: Observers[RestoreOutcome] = Observers()
        self._process: Any = None

    def start(self) -> None:
        """
        Start C{criu restore}; it waits for the session's images.
        """
        self.log.info("session {session}: restoring: {command}", session=self.session, command=" ".join(self.command))
        try:
            exit = ExitStatus()
            self._process = self._reactor.spawnProcess(
                exit, self.command[0], self.command, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"},
            )
        except OSError as e:
            self._decide(RestoreOutcome(False, status=-1, reason=f"cannot run {self.command[0]}: {e.strerror}"))
            return
        exit.ended.addCallback(self._ended)

    def whenDecided(self) -> Deferred[RestoreOutcome]:
        """
        @return: The restore's outcome, once it ended.
        """
        if self.outcome is not None:
            return succeed(self.outcome)
        d: Deferred[RestoreOutcome] = Deferred()
        self._outcomeObservers.add(d.callback)
        return d

    def _ended(self, status: int) -> None:
        self._process = None
        if status != 0:
            how = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
            self._decide(RestoreOutcome(False, status=status, reason=f"criu restore {how}", logTail=logTail(self.logPath)))
            return
        try:
            with open(self._pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError) as e:
            self._decide(RestoreOutcome(False, reason=f"criu restore wrote no pid: {e}", logTail=logTail(self.logPath)))
            return
        self._decide(RestoreOutcome(True, pid=pid))

    def _decide(self, outcome: RestoreOutcome) -> None:
        outcome = attrs.evolve(outcome, seconds=self._clock() - self.started)
        self.outcome = outcome
        if outcome.restored:
            self.log.info(
                "session {session}: restored, tree {pid} left stopped ({tasks} tasks), {seconds:.3f} s "
                "from the session's start; waiting for the source to commit",
                session=self.session, pid=outcome.pid, tasks=len(treeOf(outcome.pid)), seconds=outcome.seconds,
            )
        else:
            self.log.error(
                "session {session}: restore failed: {reason} (log {path}):\n{tail}",
                session=self.session, reason=outcome.reason, path=self.logPath, tail=outcome.logTail,
            )
        self._outcomeObservers.tell(outcome)

    def commit(self) -> None:
        """
        The source killed its copy: resume the restored tree.
        """
        outcome = self.outcome
        assert outcome is not None and outcome.restored
        if self.resolved is None:
            tasks = resumeTree(outcome.pid)
            self.resolved = "running"
            self.log.info(
                "session {session}: committed; tree {pid} resumed ({tasks} tasks), {seconds:.3f} s from the "
                "session's start (the source's frozen time is a little longer: its dump began before)",
                session=self.session, pid=outcome.pid, tasks=len(tasks), seconds=self._clock() - self.started,
            )
            shutil.rmtree(self.workDir, ignore_errors=True)

    def abort(self, reason: str) -> None:
        """
        The source keeps its copy: kill whatever was restored, and a restore
        still running.
        """
        if self._process is not None:
            try:
                self._process.signalProcess(signal.SIGKILL)
            except Exception:
                pass
        outcome = self.outcome
        if outcome is not None and outcome.restored and self.resolved is None:
            tasks = killTree(outcome.pid)
            self.log.warn("session {session}: {reason}; restored tree {pid} killed ({tasks} tasks)",
                          session=self.session, reason=reason, pid=outcome.pid, tasks=len(tasks))
            # The restore went well: its log has nothing to tell.
            shutil.rmtree(self.workDir, ignore_errors=True)
        self.resolved = self.resolved or "killed"
