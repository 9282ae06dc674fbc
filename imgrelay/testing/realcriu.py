# -*- test-case-name: tests.realcriu.test_victims -*-
"""
Real CRIU for the tests and the benchmarks: whether it can run here,
victims (L{imgrelay.testing.victim}) each in its own pid namespace, dumps
and restores with their logs, and the restored trees. Blocking: use it
from a plain test method or a script.

A victim runs as C{unshare -p -f setsid python victim.py ...}: the
namespace's init is the victim, its session leader inside, so that a
restore on this machine never collides with pids the source copy still
holds. L{becomeSubreaper} makes this process the parent of the trees
that C{criu restore -d} leaves behind, so that it can reap them.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import IO, Any, Callable, Optional

from imgrelay.local.criubin import CriuNotFound, findCriu
from imgrelay.local.proctree import children, state
from imgrelay.testing import victim as _victim

#: The victim program, run as a script so that it imports nothing of ours.
VICTIM = os.path.abspath(_victim.__file__)

_checked: dict[str, Optional[str]] = {}


def unavailable() -> Optional[str]:
    """
    @return: Why real CRIU cannot run here (not found, not root, no
        C{unshare}, or C{criu check} failed), or None if it can.
    """
    try:
        path = findCriu()
    except CriuNotFound as e:
        return str(e)
    if os.geteuid() != 0:
        return "CRIU dumps and restores as root only, and this run is not root"
    if shutil.which("unshare") is None:
        return "no unshare(1) on PATH to start victims in their own pid namespace"
    if path not in _checked:
        try:
            done = subprocess.run([path, "check"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            _checked[path] = f"{path} check could not run: {e}"
        else:
            said = (done.stdout + done.stderr).decode("utf-8", "replace").strip().splitlines()
            last = said[-1] if said else ""
            _checked[path] = None if done.returncode == 0 else f"{path} check failed ({done.returncode}): {last}"
    return _checked[path]


def becomeSubreaper() -> None:
    """
    Make this process the parent of its orphaned descendants (the trees
    C{criu restore -d} detaches), so that L{Restored.kill} can reap them.
    """
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def alive(pid: int) -> bool:
    """
    @return: Whether C{pid} exists and is not a zombie.
    """
    return state(pid) not in (None, "Z")


def _until(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.005)


def askReport(directory: str, pid: int, timeout: float = 60) -> dict[str, Any]:
    """
    Ask the victim running as C{pid} (in this namespace) to check its state.

    @param directory: The victim's directory.
    @return: Its report (L{imgrelay.testing.victim}).
    @raise RuntimeError: If it is not running or did not answer in time.
    """
    path = os.path.join(directory, "report.json")
    if os.path.exists(path):
        os.remove(path)
    if not alive(pid):
        raise RuntimeError(f"victim {pid} is not running (state {state(pid)})")
    os.kill(pid, signal.SIGUSR1)
    _until(lambda: os.path.exists(path) or not alive(pid), timeout, f"report of victim {pid}")
    if not os.path.exists(path):
        raise RuntimeError(f"victim {pid} ended before it reported:\n{_tail(os.path.join(directory, 'victim.log'))}")
    with open(path) as f:
        report: dict[str, Any] = json.load(f)
    return report


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


class Victim:
    """
    One victim process, the init of its own pid namespace.

    @ivar pid: Its pid here (the namespace's init, as C{criu dump -t} takes
        it).
    @ivar directory: Its directory: its log, its files, its reports.
    """

    def __init__(self, kind: str, directory: str, *args: str, timeout: float = 120) -> None:
        """
        Start it and wait until its state is built.

        @param kind: C{"memory"}, C{"tree"} or C{"heap"}.
        @param directory: A directory to make for it.
        @param args: Its options (C{--mib}, C{--objects}).
        """
        os.mkdir(directory)
        self.directory = directory
        self._log: IO[bytes] = open(os.path.join(directory, "unshare.log"), "wb")
        self.process = subprocess.Popen(
            ["unshare", "-p", "-f", "setsid", sys.executable, "-I", VICTIM, kind, "--dir", directory, *args],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        ready = os.path.join(directory, "ready.json")
        try:
            _until(lambda: os.path.exists(ready) or self.process.poll() is not None, timeout, "victim start")
            if not os.path.exists(ready):
                raise RuntimeError(f"victim {kind} exited with {self.process.returncode}:\n{self.log()}")
            self.pid = children(self.process.pid)[0]
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        """
        @return: What it and C{unshare} printed.
        """
        return _tail(os.path.join(self.directory, "victim.log"), 40) + "\n" + _tail(self._log.name)

    def report(self, timeout: float = 60) -> dict[str, Any]:
        """
        @return: Its report on its state, from the source copy.
        """
        return askReport(self.directory, self.pid, timeout)

    def running(self) -> bool:
        """
        @return: Whether the source copy still exists and is not a zombie.
        """
        return self.process.poll() is None and alive(self.pid)

    def stop(self) -> None:
        """
        Kill what is left of the source copy (the namespace dies with its
        init) and reap C{unshare}.
        """
        if self.process.poll() is None:
            for child in children(self.process.pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Restored:
    """
    A tree C{criu restore -d} restored, as its pidfile names it.
    """

    def __init__(self, pid: int, directory: str) -> None:
        """
        @param pid: Its root's pid here.
        @param directory: The victim's directory.
        """
        self.pid = pid
        self.directory = directory

    def report(self, timeout: float = 60) -> dict[str, Any]:
        """
        @return: Its report on its state.
        """
        return askReport(self.directory, self.pid, timeout)

    def kill(self) -> None:
        """
        Kill it (its namespace dies with it) and reap it.
        """
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            _until(lambda: not alive(self.pid), 30, f"restored tree {self.pid} to die")


class CriuRun:
    """
    One C{criu} command running, its log in a file.
    """

    def __init__(self, command: list[str], logPath: str, pidfile: Optional[str] = None) -> None:
        self.command = command
        self.logPath = logPath
        self.pidfile = pidfile
        self._output: IO[bytes] = open(logPath + ".out", "wb")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait(self, timeout: float = 120) -> int:
        """
        @return: Its exit status.
        """
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.returncode is not None:
                self._output.close()

    def errors(self, lines: int = 15) -> str:
        """
        @return: The last lines of its output and of its log, for a failure
            message.
        """
        said = _tail(self.logPath, 400).splitlines()
        errors = [line for line in said if "Error" in line or "Warn" in line]
        return "\n".join([" ".join(self.command), _tail(self.logPath + ".out", lines), *errors[-lines:]])

    def restored(self, directory: str) -> Restored:
        """
        @param directory: The victim's directory.
        @return: The tree a C{restore -d} with a pidfile restored.
        """
        assert self.pidfile is not None
        with open(self.pidfile) as f:
            return Restored(int(f.read().strip()), directory)

    def stop(self) -> None:
        """
        Kill it if it still runs.
        """
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._output.close()


class Criu:
    """
    The CRIU binary L{findCriu} names, with every log under one directory.
    """

    def __init__(self, logs: str, path: Optional[str] = None) -> None:
        self.path = path if path is not None else findCriu()
        self.logs = logs
        self._runs = 0

    def run(self, action: str, imagesDir: str, *args: str, pidfile: bool = False) -> CriuRun:
        """
        Start C{criu ACTION -D imagesDir ARGS}, logging at C{-v4} to a file
        of its own.

        @param pidfile: Give it C{--pidfile} (for C{restore -d}).
        """
        self._runs += 1
        log = os.path.join(self.logs, f"criu-{self._runs}-{action}.log")
        command = [self.path, action, "-D", imagesDir, "-o", log, "-v4", *args]
        path = None
        if pidfile:
            path = os.path.join(self.logs, f"criu-{self._runs}.pid")
            command += ["--pidfile", path]
        return CriuRun(command, log, path)

    def dump(self, pid: int, imagesDir: str, *args: str) -> CriuRun:
        """
        Start C{criu dump -t PID}.
        """
        return self.run("dump", imagesDir, "-t", str(pid), *args)

    def restore(self, imagesDir: str, *args: str) -> CriuRun:
        """
        Start C{criu restore -d}, its root's pid to a pidfile.
        """
        return self.run("restore", imagesDir, "-d", *args, pidfile=True)


def leftovers(marker: str) -> list[tuple[int, str]]:
    """
    @return: The processes whose command line names C{marker} (a test's
        directory), as (pid, command line); zombies excluded.
    """
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                line = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in line and alive(int(entry)):
            found.append((int(entry), line.strip()))
    return found


def mounts(marker: str) -> set[str]:
    """
    @param marker: A test's directory.
    @return: This mount namespace's mounts that CRIU or a test could have
        made: below C{marker}, or named as CRIU names its temporary ones
        (C{.criu...}); as lines of C{mountinfo} without their ids. Other
        mounts (another program's) are no business of the test.
    """
    with open("/proc/self/mountinfo") as f:
        lines = [line.split() for line in f]
    return {" ".join(fields[3:]) for fields in lines if fields[4].startswith(marker) or ".criu" in fields[4]}
