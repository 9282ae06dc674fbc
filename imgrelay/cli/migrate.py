# -*- test-case-name: tests.realcriu.test_migrate -*-
"""
C{imgrelay migrate --pid PID --to ENDPOINT}: the source's one command. It
runs C{criu dump --stream --leave-stopped} of the tree at PID through a
proxy in this process, waits for the destination's verdict (its cache runs
the restore: C{imgrelay-cache --restore}), and commits: on a restore that
succeeded it kills its stopped tree, then has the destination resume the
restored one; on anything else it resumes its own tree. See
C{docs/migrate.md} for the protocol and the one window where the process
ends up stopped on the destination with nobody to resume it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Optional, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from imgrelay.cli.progress import Progress
from imgrelay.config import ProxyConfig
from imgrelay.core.errors import SessionError
from imgrelay.local.criurun import ExitStatus, logTail
from imgrelay.local.proctree import killTree, residentBytes, resumeTree, treeOf
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.proxy.service import ProxyService
from imgrelay.proxy.session import ProxySession
from imgrelay.proxy.verdict import VerdictClient


class MigrateError(Exception):
    """
    The migration did not happen; the message says why and where the
    process is.
    """


@attrs.define
class Migration:
    """
    What C{imgrelay migrate} did, for its summary.

    @ivar outcome: C{"migrated"}, C{"kept"} (the source resumed its own
        process), or C{"stopped-at-destination"}.
    @ivar downtime: Seconds from the dump's start (the tree frozen) to the
        destination's word that its tree runs; None if it never did.
    """

    pid: int
    session: str
    outcome: str = "kept"
    images: int = 0
    bytes: int = 0
    linkBytes: int = 0
    restoredPid: int = 0
    dumpSeconds: float = 0.0
    downtime: Optional[float] = None
    destinationSeconds: Optional[float] = None
    reason: str = ""

    def summary(self) -> dict[str, Any]:
        """
        @return: The JSON summary (C{--json}).
        """
        return attrs.asdict(self)


def _treeBytes(pid: int) -> int:
    total = 0
    for member in treeOf(pid):
        try:
            total += residentBytes(member)
        except OSError:
            continue
    return total


async def migrate(
    reactor: Any, pid: int, config: ProxyConfig, criu: str, dumpArgs: Sequence[str], verdictTimeout: float,
    progress: Progress, note: Callable[[str], None],
) -> Migration:
    """
    Migrate the tree at C{pid} (see the module docstring).

    @param config: The proxy's options: C{imagesDir} a fresh directory for
        CRIU's socket, C{verdict} and C{oneshot} set.
    @param criu: The CRIU binary.
    @param dumpArgs: More arguments for C{criu dump}.
    @param verdictTimeout: Seconds to wait for the destination's verdict
        once the session is confirmed (its restore runs meanwhile).
    @param note: Says a line to the user (stderr).
    @return: What happened: C{outcome} C{"migrated"}, or, on a failure that
        left things clear, C{"kept"} with the reason.
    @raise MigrateError: When the process is left stopped at the
        destination, the message says where and how to finish by hand.
    """
    assert config.imagesDir is not None and config.sessionName is not None
    result = Migration(pid, config.sessionName)
    service = ProxyService(config, reactor)
    sessions: list[ProxySession] = []
    service.addSessionStartObserver(sessions.append)
    outcome: Deferred[Any] = Deferred()
    service.addSessionObserver(lambda r: None if outcome.called else outcome.callback(r))
    service.startService()
    log = os.path.join(config.imagesDir, "dump.log")
    command = [criu, "dump", "--stream", "-D", config.imagesDir, "-t", str(pid), "--leave-stopped", "-o", log,
               "-v4", *dumpArgs]
    frozen = reactor.seconds()
    exit = ExitStatus()
    progress.start(_treeBytes(pid), f"session {config.sessionName}, process {pid}")
    reported = [0]

    def report() -> None:
        if sessions:
            progress.update(sessions[0].bytesRead - reported[0])
            reported[0] = sessions[0].bytesRead

    ticker = LoopingCall(report)
    ticker.clock = reactor
    ticker.start(0.2, now=False)
    verdicts: Optional[VerdictClient] = None
    # While the dumped tree waits stopped here and is ours to decide, it is
    # resumed on any way out (an interruption too): nothing was committed.
    stoppedHere = [False]

    def interrupted() -> None:
        if stoppedHere[0]:
            resumeTree(pid)
            note(f"interrupted; the process was resumed here (pid {pid})")

    trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    try:
        reactor.spawnProcess(exit, criu, command, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"})
        status = await exit.ended
        result.dumpSeconds = reactor.seconds() - frozen
        if status != 0:
            # CRIU resumed the tree itself; the proxy gives the session up.
            tail = logTail(log, 8, ("Error",)) if os.path.exists(log) else ""
            result.reason = f"criu dump failed with status {status}; the process runs on here:\n{tail}"
            return result
        stoppedHere[0] = True
        try:
            confirmed: SessionOutcome = await outcome
        except SessionError as e:
            # The dump succeeded (the tree is stopped) and the session did
            # not: nobody else can have a copy.
            result.reason = f"{e}; the process was resumed here"
            return result
        report()
        result.images, result.bytes, result.linkBytes = confirmed.images, confirmed.bytes, confirmed.linkBytes
        note(f"session {confirmed.name} confirmed ({confirmed.images} images); waiting for the restore's verdict")
        token = sessions[0].linkToken
        assert token is not None
        verdicts = VerdictClient(service.connectEndpoint, confirmed.name, token, reactor, config.reconnectTimeout)
        verdicts.start()
        timer = reactor.callLater(verdictTimeout, verdicts.fail, f"no verdict within {verdictTimeout:g} s")
        try:
            verdict = await verdicts.verdict
        except SessionError as e:
            # The destination never resumes a tree without a commit, and
            # kills one whose verdict found no link: ours is the copy.
            verdicts.answer(False, "the source gave up waiting")
            result.reason = f"{e}; the process was resumed here"
            return result
        finally:
            if timer.active():
                timer.cancel()
        if not verdict.restored:
            verdicts.answer(False, "the restore failed")
            result.reason = (f"the destination's restore failed: {verdict.reason}; the process was resumed here"
                             + (f"\n{verdict.log_tail}" if verdict.log_tail else ""))
            return result
        result.restoredPid = verdict.pid
        # The point of no return: this copy goes, then the restored one runs.
        stoppedHere[0] = False
        killTree(pid)
        try:
            resolved = await verdicts.answer(True)
        except SessionError as e:
            result.outcome = "stopped-at-destination"
            result.reason = (
                f"{e}. The process is no longer here; the destination holds it STOPPED as pid {verdict.pid}: "
                f"resume it there with: imgrelay resolve --resume {verdict.pid}"
            )
            raise MigrateError(result.reason)
        result.outcome = "migrated" if resolved.running else "kept"
        result.downtime = reactor.seconds() - frozen
        result.destinationSeconds = resolved.seconds
        return result
    finally:
        if stoppedHere[0]:
            # Every way out before the point of no return: the process is
            # ours, and runs on here.
            resumeTree(pid)
        reactor.removeSystemEventTrigger(trigger)
        # A session that ends after we stopped waiting is told nobody.
        outcome.addErrback(lambda failure: None)
        if ticker.running:
            ticker.stop()
        progress.close()
        if verdicts is not None:
            verdicts.stop()
        await service.stopService()
        shutil.rmtree(config.imagesDir, ignore_errors=True)


def imagesDirectory() -> str:
    """
    @return: A fresh directory (mode 0700) for CRIU's socket.
    """
    return tempfile.mkdtemp(prefix="imgrelay-migrate-")
