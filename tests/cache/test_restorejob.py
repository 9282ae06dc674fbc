"""
Tests for L{imgrelay.cache.restorejob}, with a stand-in for CRIU: a script
that does what C{criu restore -d --pidfile} does on success (names a tree's
root, here a stopped process the test started) or fails as CRIU does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from imgrelay.cache.restorejob import RestoreJob
from imgrelay.local.proctree import state

_FAKE = """#!/bin/sh
# criu restore ... --pidfile F -o LOG ...: write PID into F, or fail.
while [ $# -gt 0 ]; do
    case "$1" in
        --pidfile) pidfile=$2; shift ;;
        -o) log=$2; shift ;;
    esac
    shift
done
echo "(00.000001) Warn (criu/kerndat.c:1290): harmless" > "$log"
if [ -n "$FAIL" ]; then
    echo "(00.000002) Error (criu/cr-restore.c:2324): Restoring FAILED." >> "$log"
    exit 3
fi
echo "$PID" > "$pidfile"
"""


class RestoreJobTests(TestCase):
    """
    A restore's outcome, and the tree's fate.
    """

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="imgrelay-restorejob-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.criu = os.path.join(self.dir, "criu")
        with open(self.criu, "w") as f:
            f.write(_FAKE)
        os.chmod(self.criu, 0o755)
        self.tree = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.addCleanup(self.tree.wait)
        self.addCleanup(self.tree.kill)
        self.tree.send_signal(signal.SIGSTOP)
        os.environ["PID"] = str(self.tree.pid)
        self.addCleanup(os.environ.pop, "PID", None)
        self.addCleanup(os.environ.pop, "FAIL", None)

    def job(self, criu: str = "") -> RestoreJob:
        job = RestoreJob(reactor, criu or self.criu, self.dir, ["--extra"], "mig", reactor.seconds, reactor.seconds())
        self.addCleanup(shutil.rmtree, job.workDir, True)
        return job

    async def test_restored(self) -> None:
        """
        CRIU exits 0: the pidfile names the tree, left stopped; the command
        has the stream, the leave-stopped and the extra arguments; a commit
        resumes the tree.
        """
        job = self.job()
        self.assertIn("--leave-stopped", job.command)
        self.assertEqual(job.command[1:5], ["restore", "--stream", "-D", self.dir])
        self.assertEqual(job.command[-1], "--extra")
        job.start()
        outcome = await job.whenDecided()
        self.assertEqual((outcome.restored, outcome.pid), (True, self.tree.pid))
        self.assertEqual(state(self.tree.pid), "T")
        job.commit()
        self.assertEqual(job.resolved, "running")
        self.assertNotEqual(state(self.tree.pid), "T")
        self.assertFalse(os.path.exists(job.workDir))

    async def test_abort(self) -> None:
        """
        An abort kills the restored tree.
        """
        job = self.job()
        job.start()
        await job.whenDecided()
        job.abort("the source kept it")
        self.assertEqual(self.tree.wait(10), -signal.SIGKILL)
        self.assertEqual(job.resolved, "killed")

    async def test_failed(self) -> None:
        """
        CRIU fails: the outcome says how, with the errors of its log.
        """
        os.environ["FAIL"] = "1"
        job = self.job()
        job.start()
        outcome = await job.whenDecided()
        self.assertFalse(outcome.restored)
        self.assertEqual(outcome.status, 3)
        self.assertEqual(outcome.reason, "criu restore exited with status 3")
        self.assertIn("Restoring FAILED", outcome.logTail)
        self.assertEqual(state(self.tree.pid), "T")

    async def test_noCriu(self) -> None:
        """
        A CRIU that cannot run fails the restore.
        """
        job = self.job(os.path.join(self.dir, "missing"))
        job.start()
        outcome = await job.whenDecided()
        self.assertFalse(outcome.restored)
