# -*- test-case-name: tests.local.test_criurun -*-
"""
CRIU as a child process of a daemon or a command: how it exited
(L{ExitStatus}), and what its log says went wrong (L{logTail}).
"""

from __future__ import annotations

from typing import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure


class ExitStatus(ProcessProtocol):
    """
    A process protocol that only waits for the end.

    @ivar ended: Fires with the exit status: 0, the status it exited with,
        or the negated signal that killed it.
    """

    def __init__(self) -> None:
        self.ended: Deferred[int] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        """
        The process ended: say how.
        """
        value = reason.value
        if isinstance(value, ProcessDone):
            self.ended.callback(0)
        elif isinstance(value, ProcessTerminated):
            self.ended.callback(value.exitCode if value.exitCode is not None else -(value.signal or 0))
        else:  # pragma: no cover - Twisted gives no other
            self.ended.callback(-1)


def logTail(path: str, lines: int = 12, levels: Sequence[str] = ("Error", "Warn")) -> str:
    """
    @return: The lines of a CRIU log at one of C{levels} (its last lines if
        it has none), at most C{lines} of them; or why there is no log.
    """
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return f"(no log: {e.strerror})"
    said = [line for line in text if any(level in line for level in levels)] or text
    return "\n".join(said[-lines:])
