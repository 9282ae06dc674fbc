# -*- test-case-name: tests.core.test_slot,tests.core.test_store -*-
"""
The session a cache serves from one images directory (L{SessionSlot}):
restores attach to it before a proxy claims it, and it is handed on to the
next session once it is over.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from imgrelay.core.observers import Observers
from imgrelay.core.errors import SessionError
from imgrelay.core.interfaces import ISessionClaims

from imgrelay.core.store import Session, SessionState


@implementer(ISessionClaims)
class SessionSlot:
    """
    The session a cache serves from one images directory.

    Restores attach to the current session, even before any proxy has
    claimed it, so a restore may start before the dump. Once a session is
    final and every restore attached to it has gone, it is kept C{retain}
    seconds more (a restore attaching meanwhile reads it again, and the
    count starts over when it leaves); then it is I{consumed}: its images
    are dropped and a fresh session waits for the next proxy. A failed
    session that no restore reads is consumed C{retain} seconds after it
    failed, but stays current (holding no image) so that a restore
    connecting later still learns of the failure, until the next proxy.

    @ivar current: The session a restore connecting now would read.
    """

    log = Logger()

    def __init__(
        self,
        consumed: Callable[[Session], None] = lambda s: None,
        clock: Callable[[], float] = time.monotonic,
        retain: float = 0.0,
        timer: Optional[IReactorTime] = None,
        renew: bool = True,
    ) -> None:
        """
        @param consumed: Called with each session once it is consumed.
        @param clock: Where sessions read the time.
        @param retain: Seconds a final session is kept after its last
            restore left (or, failed, after it failed with none reading).
        @param timer: Where that wait is scheduled; needed if C{retain} is
            positive.
        @param renew: Whether a fresh session replaces a consumed one; a
            slot that serves one session name only and is dropped with it
            keeps the consumed session, so that a restore attaching late
            finds nothing.
        @raise ValueError: For a positive C{retain} and no C{timer}.
        """
        if retain > 0 and timer is None:
            raise ValueError("keeping sessions for a time needs a timer")
        self._clock = clock
        self._consumed = consumed
        self._retain = retain
        self._timer = timer
        self._renew = renew
        self._releases: dict[Session, IDelayedCall] = {}
        self._claimObservers: Observers[Session] = Observers()
        self.current = self._fresh()

    def _fresh(self) -> Session:
        session = Session(self._clock)
        session.addFinalObserver(self._final)
        return session

    def _final(self, session: Session) -> None:
        if session.restores == 0 and session.state is SessionState.FAILED:
            # Nobody is reading it; a restore that connects later still
            # learns of the failure until the next proxy replaces it.
            self._keep(session, renew=False)

    def _keep(self, session: Session, renew: bool) -> None:
        """
        Consume C{session} after the retention time, unless a restore
        attaches first.
        """
        self._cancel(session)
        if self._retain <= 0:
            self._consume(session, renew)
        else:
            assert self._timer is not None
            self._releases[session] = self._timer.callLater(self._retain, self._consume, session, renew)

    def _cancel(self, session: Session) -> None:
        pending = self._releases.pop(session, None)
        if pending is not None and pending.active():
            pending.cancel()

    def _consume(self, session: Session, renew: bool = True) -> None:
        self._cancel(session)
        if renew and self._renew and session is self.current:
            self.current = self._fresh()
        if session.consumed:
            return
        session.consumed = True
        session.images.clear()
        self._consumed(session)

    def stop(self) -> None:
        """
        The cache stops: sessions waiting for their retention time are
        consumed now, and from now on none is kept.
        """
        self._retain = 0.0
        for session in list(self._releases):
            self._consume(session)

    @property
    def pendingReleases(self) -> int:
        """
        @return: How many final sessions wait for their retention time.
        """
        return len(self._releases)

    def claim(self, name: str) -> Session:
        """
        A proxy starts session C{name}.

        @return: The session its link fills.
        @raise SessionError: If this slot cannot take it now.
        """
        current = self.current
        if current.state is SessionState.RECEIVING:
            raise SessionError(f"session {current.name!r} is still in progress")
        if current.state is SessionState.COMPLETE and current.name == name and not current.consumed:
            raise SessionError(f"session {name!r} is already complete")
        if current.state is not SessionState.WAITING:
            if current.state is SessionState.COMPLETE and not current.restoresAttached and not current.consumed:
                self.log.warn(
                    "session {old} was never restored; dropped for session {new}",
                    old=current.name, new=name,
                )
            old, current = current, self._fresh()
            self.current = current
            current.claim(name)
            if not old.restores:
                # Restores still reading it consume it when they leave.
                self._consume(old)
        else:
            current.claim(name)
        self._claimObservers.tell(current)
        return current

    def addClaimObserver(self, observer: Callable[[Session], None]) -> None:
        """
        Call C{observer} with each session once a proxy claimed it.
        """
        self._claimObservers.add(observer)

    def attachRestore(self) -> Session:
        """
        A restore connected.

        @return: The session it reads.
        """
        session = self.current
        session.restores += 1
        session.restoresAttached += 1
        self._cancel(session)
        return session

    def detachRestore(self, session: Session) -> None:
        """
        A restore of C{session} disconnected and its pipes are written.
        """
        session.restores -= 1
        if session.final and session.restores == 0:
            self._keep(session, renew=True)
