# -*- test-case-name: tests.transport.test_workers -*-
"""
L{Workers}: a few threads of a daemon's own for work too heavy for the
reactor's thread (compressing and decoding chunks), started and stopped
with the daemon.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

#: Threads per daemon: these machines have two cores, and the reactor's
#: thread wants one of them.
DEFAULT_THREADS = 2


class Workers(Service):
    """
    See the module docstring.

    @ivar pool: The threads.
    """

    def __init__(self, reactor: Any, name: str, threads: int = DEFAULT_THREADS) -> None:
        """
        @param reactor: Where results are delivered.
        @param name: The threads' name.
        @param threads: How many at most.
        """
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self.threads = threads

    def run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Run C{work(*args)} in one of the threads (queued until the service
        starts).

        @return: Its result, on the reactor's thread.
        """
        return deferToThreadPool(self._reactor, self.pool, work, *args)

    def startService(self) -> None:
        """
        Start the threads.
        """
        Service.startService(self)
        self.pool.start()

    def stopService(self) -> None:
        """
        Stop the threads once the work they hold is done.
        """
        Service.stopService(self)
        self.pool.stop()
