# -*- test-case-name: tests.e2e.test_e2e -*-
"""
Run the real twistd plugins as subprocesses, for the end-to-end tests, the
demo and the benchmarks. Blocking: use it from a thread or a plain script.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Callable, Optional

#: How twistd is started: with this interpreter, whatever PATH says.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def freePort() -> int:
    """
    @return: A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: A listening socket's flag in C{/proc/net/unix} (C{__SO_ACCEPTCON}).
_ACCEPTING = 0x10000


def unixListening(path: str, table: str = "/proc/net/unix") -> bool:
    """
    Whether a UNIX socket listens at C{path}, without connecting to it (a
    connection to a daemon's CRIU socket would be a dump or a restore).

    The socket file alone says less: Twisted binds (which makes the file),
    sets its mode, and only then listens; a client connecting in between
    is refused.

    @param table: The C{/proc} table to look in. C{/proc/net/unix} lists
        only the sockets of the reader's network namespace; a daemon's own
        (C{/proc/PID/net/unix}) lists those of the daemon's, wherever it runs.
    """
    try:
        f = open(table, "rb")
    except FileNotFoundError:  # the process named by the table is gone
        return False
    with f:
        next(f)
        for line in f:
            fields = line.rstrip(b"\n").split(None, 7)
            if len(fields) == 8 and fields[7] == os.fsencode(path) and int(fields[3], 16) & _ACCEPTING:
                return True
    return False


def waitReady(
    exited: Callable[[], Optional[int]], log: Callable[[], str], path: Optional[str] = None,
    port: Optional[int] = None, timeout: float = 30, table: str = "/proc/net/unix",
) -> None:
    """
    Wait until a daemon's UNIX socket listens or its TCP port accepts.

    @param exited: Its exit status if it exited, else None.
    @param log: What it printed, for the error.
    @param table: Where to look for the UNIX socket (L{unixListening}).
    @raise RuntimeError: If it exited or the time ran out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = exited()
        if status is not None:
            raise RuntimeError(f"daemon exited with {status}:\n{log()}")
        if path is not None and unixListening(path, table):
            return
        if port is not None:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return
            except OSError:
                pass
        time.sleep(0.01)
    raise RuntimeError(f"daemon not ready after {timeout} s:\n{log()}")


class Daemon:
    """
    One C{twistd -n imgrelay-...} process, its output in a log file.
    """

    def __init__(
        self, plugin: str, args: list[str], logPath: str, passFds: tuple[int, ...] = (), prefix: tuple[str, ...] = (),
    ) -> None:
        """
        @param plugin: C{"imgrelay-proxy"} or C{"imgrelay-cache"}.
        @param args: The plugin's options.
        @param logPath: Where its output goes.
        @param passFds: Descriptors it inherits, under the same numbers
            (for C{--status-fd}).
        @param prefix: A command that runs twistd, ending with its
            arguments, e.g. C{("ip", "netns", "exec", NAME)} to run it in
            a network namespace. It must exec twistd in its own process
            (as C{ip netns exec} does), so that the pid is the daemon's.
        """
        self.plugin = plugin
        self.logPath = logPath
        self._log: IO[bytes] = open(logPath, "wb")
        self.process = subprocess.Popen(
            [*prefix, *TWISTD, "-n", "--pidfile=", plugin, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=passFds,
        )

    def log(self) -> str:
        """
        @return: Everything it printed so far.
        """
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def waitFor(self, path: Optional[str] = None, port: Optional[int] = None, timeout: float = 30) -> None:
        """
        Wait until a UNIX socket listens at C{path} or a TCP port accepts
        (on 127.0.0.1 of this process's network namespace). The socket is
        looked for in the daemon's own network namespace.

        @raise RuntimeError: If the daemon exited or the time ran out.
        """
        waitReady(self.process.poll, self.log, path, port, timeout, f"/proc/{self.process.pid}/net/unix")

    def wait(self, timeout: float = 60) -> int:
        """
        @return: The exit status, once it exited.
        @raise RuntimeError: If it still runs after C{timeout} seconds,
            with the end of its log.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = "\n".join(self.log().splitlines()[-30:])
            raise RuntimeError(f"{self.plugin} still runs after {timeout} s:\n{tail}") from None
        finally:
            if self.process.returncode is not None:
                self._log.close()

    def stop(self) -> None:
        """
        Stop it if it still runs.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
