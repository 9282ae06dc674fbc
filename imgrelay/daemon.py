# -*- test-case-name: tests.test_tap -*-
"""
What makes a service a twistd daemon: L{Daemon}, its top service, which
turns a bind error into one clear line; and L{stopWithStatus}, which ends
a C{--oneshot} daemon with an exit status.

A C{--oneshot} daemon's exit status: twistd itself always
exits 0 once the reactor stops, so the status is applied at interpreter
exit, after twistd has cleaned up (its log written, its pid file removed).

The process then ends at once (C{os._exit}), without the interpreter's own
teardown: a last garbage collection over every object twistd, Twisted and
protobuf made, and the clearing of every module. Nothing of that matters
to a process that is done, and it cost each daemon about 0.05 CPU seconds
and as long before its exit status reached whoever waits for it (a
migration script waits for the proxy's, to know the cache verified
everything).
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError

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
    atexit.register(_exitWithStatus)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


class Daemon(MultiService):
    """
    The top service of a twistd daemon: a bind error ends twistd with one
    clear line instead of a traceback.
    """

    def __init__(self, name: str, service: IService) -> None:
        MultiService.__init__(self)
        self._name = name
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint now, or exit naming the one that failed.
        """
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as e:
            if isinstance(e.port, (bytes, str)):
                path = e.port.decode() if isinstance(e.port, bytes) else e.port
                why = str(e.socketError)
                if why == "Cannot acquire lock":
                    why = "another running daemon holds this socket"
                raise SystemExit(f"{self._name}: cannot listen on {path}: {why}")
            raise SystemExit(f"{self._name}: cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}")
