# -*- test-case-name: tests.test_tap -*-
"""
Ending a C{--oneshot} daemon with an exit status: twistd itself always
exits 0 once the reactor stops, so a failure status is applied at
interpreter exit, after twistd has cleaned up.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

_status: list[int] = []


def _exitWithStatus() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(_status[0])


def stopWithStatus(reactor: Any, status: int) -> None:
    """
    Stop the reactor; make the process exit with C{status} once twistd is
    done.

    @param reactor: The running reactor.
    @param status: The exit status; only the first call's counts.
    """
    if _status:
        return
    _status.append(status)
    if status:
        atexit.register(_exitWithStatus)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)
