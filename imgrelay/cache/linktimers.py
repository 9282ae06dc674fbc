# -*- test-case-name: tests.cache.test_link -*-
"""
The timers of one cache link (L{LinkTimers}): the heartbeat that tells the
proxy the link is alive however quiet it is, and the wait for the proxy to
close the link after the confirmation.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class LinkTimers:
    """
    See the module docstring.
    """

    log = Logger()

    def __init__(self, clock: Callable[[], IReactorTime]) -> None:
        """
        @param clock: Gives the clock the timers run on, when they start.
        """
        self._clock = clock
        self._beating: Optional[LoopingCall] = None
        self._confirmed: Optional[IDelayedCall] = None

    def beat(self, interval: float, tell: Callable[[], None]) -> None:
        """
        Call C{tell} every C{interval} seconds until L{stop}.
        """
        self._beating = LoopingCall(tell)
        self._beating.clock = self._clock()
        self._beating.start(interval, now=False)

    @property
    def confirming(self) -> bool:
        """
        Whether L{afterConfirmation} waits.
        """
        return self._confirmed is not None

    def afterConfirmation(self, grace: float, session: Optional[str], leftOpen: Callable[[], None]) -> None:
        """
        The proxy closes the link once it has the cache's confirmation. A
        link still open C{grace} seconds later is a dead one whose end
        never reached us (a relay that keeps it open): say so, and call
        C{leftOpen} to close it; the session waits for the proxy to resume
        it should it not have had the answer.
        """
        def fire() -> None:
            self._confirmed = None
            self.log.warn(
                "session {session}: the proxy did not close the link within {grace:g} s of the confirmation; "
                "closing it (the session waits for a resume, should the proxy not have had the answer)",
                session=session, grace=grace,
            )
            leftOpen()

        self._confirmed = self._clock().callLater(grace, fire)

    def stop(self) -> None:
        """
        Stop every timer.
        """
        if self._beating is not None and self._beating.running:
            self._beating.stop()
        self._beating = None
        if self._confirmed is not None and self._confirmed.active():
            self._confirmed.cancel()
        self._confirmed = None
