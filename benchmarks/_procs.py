"""
Child processes whose CPU time and peak memory are measured: the daemons
(C{twistd imgrelay-...}) and the baseline's relays.

CPU time is counted from L{MeasuredProcess.markStart} (just before the
first byte is written, so start-up is left out) to the process's exit:
the start from C{/proc/PID/schedstat} (nanoseconds on the CPU), the end from
the C{rusage} that C{os.wait4} returns when reaping it (user + system; the
kernel keeps the two sums equal). Peak RSS is C{ru_maxrss} from the same
C{wait4}, which L{benchmarks._spawn} does (see there why).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from typing import IO, Optional

import attrs

from imgrelay.testing.daemons import TWISTD, waitReady


@attrs.frozen
class ProcStats:
    """
    How a measured process ended.

    @ivar status: Its exit code (negative: killed by that signal).
    @ivar exited: C{time.monotonic()} when its exit was seen.
    @ivar cpu: CPU seconds (user + system) since L{MeasuredProcess.markStart}.
    @ivar user: User seconds over its whole life.
    @ivar system: System seconds over its whole life.
    @ivar peakRss: Peak resident set, bytes.
    """

    status: int
    exited: float
    cpu: float
    user: float
    system: float
    peakRss: int


def _schedCpu(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


class MeasuredProcess:
    """
    One child process, its output in a log file, started and reaped through
    L{benchmarks._spawn} so that its peak RSS is its own.

    @ivar pid: The command's pid (the wrapper's child).
    """

    def __init__(self, argv: list[str], logPath: str) -> None:
        """
        @param argv: The command.
        @param logPath: Where its output goes; its directory is its cwd.
        """
        self.logPath = logPath
        self._log: IO[bytes] = open(logPath, "wb")
        r, w = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._spawn", str(w), "--", *argv],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=os.path.dirname(logPath), pass_fds=[w],
        )
        os.close(w)
        self._report = os.fdopen(r, "r")
        self.pid = int(json.loads(self._report.readline())["pid"])
        self._pidfd = os.pidfd_open(self.process.pid)
        self._cpuStart = 0.0
        self.stats: Optional[ProcStats] = None

    @classmethod
    def daemon(cls, plugin: str, args: list[str], logPath: str) -> MeasuredProcess:
        """
        @return: C{twistd -n} running C{plugin}, as L{imgrelay.testing.daemons.Daemon} does.
        """
        return cls(TWISTD + ["-n", "--pidfile=", plugin, *args], logPath)

    def log(self) -> str:
        """@return: Everything it printed so far."""
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _exited(self) -> Optional[int]:
        """@return: The wrapper's exit status if it exited (not reaped)."""
        info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status

    def waitFor(self, path: Optional[str] = None, port: Optional[int] = None, timeout: float = 30) -> None:
        """
        Wait until a UNIX socket listens at C{path} or a TCP port accepts.

        @raise RuntimeError: If it exited or the time ran out.
        """
        try:
            waitReady(self._exited, self.log, path, port, timeout)
        except RuntimeError as e:
            raise RuntimeError(f"{self.logPath}: {e}") from None

    def check(self) -> None:
        """
        Fail fast: look, without reaping, whether it exited with an error,
        and whether its log shows a traceback.

        @raise RuntimeError: If so.
        """
        if self.stats is None:
            status = self._exited()
            if status:
                raise RuntimeError(f"{self.logPath}: exited early with status {status}")
        with open(self.logPath, "rb") as f:
            log = f.read()
        if b"Traceback" in log or b"Unhandled Error" in log:
            raise RuntimeError(f"{self.logPath}: logged a traceback")

    def markStart(self) -> None:
        """Note its CPU time so far: what follows is what is measured."""
        self._cpuStart = _schedCpu(self.pid)

    def reap(self, timeout: float) -> ProcStats:
        """
        Wait for it to exit and collect its resource usage.

        @raise TimeoutError: If it still runs after C{timeout} seconds.
        """
        if self.stats is not None:
            return self.stats
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"{self.logPath}: still running after {timeout} s")
        os.wait4(self.process.pid, 0)
        report = self._report.readline()
        self.process.returncode = 0  # reaped here: Popen must not wait again
        self._close()
        if not report:
            raise RuntimeError(f"{self.logPath}: the spawn wrapper died without a report")
        ru = json.loads(report)
        self.stats = ProcStats(
            ru["status"], ru["exited"], ru["user"] + ru["system"] - self._cpuStart, ru["user"], ru["system"], ru["maxrss"],
        )
        return self.stats

    def stop(self) -> None:
        """Stop it if it still runs (after a failure), and reap it."""
        if self.stats is None and self.process.returncode is None:
            try:
                self.process.send_signal(signal.SIGTERM)
                self.reap(10)
            except TimeoutError:
                os.kill(self.pid, signal.SIGKILL)
                self.reap(10)
            except (ProcessLookupError, RuntimeError):
                pass
        self._close()

    def _close(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        if not self._log.closed:
            self._log.close()
        if not self._report.closed:
            self._report.close()


def relay(role: str, args: list[str], logPath: str) -> MeasuredProcess:
    """
    @return: A baseline relay (L{benchmarks._relay}) in a fresh interpreter.
    """
    return MeasuredProcess([sys.executable, "-m", "benchmarks._relay", role, *args], logPath)
