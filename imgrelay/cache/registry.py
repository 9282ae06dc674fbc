# -*- test-case-name: tests.cache.test_registry -*-
"""
Many sessions on one cache, each by the name its proxy gave: a
L{SessionSlot} per name, made when a proxy claims the name and dropped once
its session is consumed.

Nothing here does I/O: whoever makes the registry is told when a name's
slot opens (to give it its own directory and sockets) and when it closes.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from imgrelay.core.observers import Observers
from imgrelay.core.errors import SessionError
from imgrelay.core.interfaces import ISessionClaims
from imgrelay.core.names import BadName, checkSessionDirName
from imgrelay.core.store import Session, SessionState
from imgrelay.core.slot import SessionSlot

#: How many sessions a cache receives at once by default.
DEFAULT_MAX_SESSIONS = 64

SlotHook = Callable[[str, SessionSlot], object]


def _nothing(name: str, slot: SessionSlot) -> None:
    pass


@implementer(ISessionClaims)
class SessionRegistry:
    """
    The sessions of a cache that serves each under its own name.

    A name may not be claimed while its session is in progress, nor while
    it is complete and kept (for its restore, then for the retention time);
    a failed session's name may be claimed again at once. Sessions are
    otherwise independent: each has its own slot, its own restores and its
    own retention time.

    @ivar slots: The slot of each name that has one.
    """

    log = Logger()

    def __init__(
        self,
        opened: SlotHook = _nothing,
        closed: SlotHook = _nothing,
        consumed: Callable[[Session], None] = lambda s: None,
        clock: Callable[[], float] = time.monotonic,
        retain: float = 0.0,
        timer: Optional[IReactorTime] = None,
        maxSessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        """
        @param opened: Called with a name and its new slot before the slot's
            first session is claimed; an exception it raises refuses the
            claim.
        @param closed: Called with a name and its slot once the slot is
            dropped: its session was consumed.
        @param consumed: Called with each session once it is consumed.
        @param clock: Where sessions read the time.
        @param retain: Seconds a final session is kept after its last
            restore left (see L{SessionSlot}).
        @param timer: Where that wait is scheduled.
        @param maxSessions: How many sessions may be in progress at once.
        """
        if retain > 0 and timer is None:
            raise ValueError("keeping sessions for a time needs a timer")
        self._opened = opened
        self._closed = closed
        self._consumed = consumed
        self._clock = clock
        self._retain = retain
        self._timer = timer
        self.maxSessions = maxSessions
        self.slots: dict[str, SessionSlot] = {}
        self._claimObservers: Observers[Session] = Observers()

    def addClaimObserver(self, observer: Callable[[Session], None]) -> None:
        """
        Call C{observer} with each session a proxy claims, once claimed.
        """
        self._claimObservers.add(observer)

    @property
    def sessions(self) -> list[Session]:
        """
        @return: The current session of every name, in claim order.
        """
        return [slot.current for slot in self.slots.values()]

    @property
    def inProgress(self) -> int:
        """
        @return: How many sessions are receiving now.
        """
        return sum(1 for s in self.sessions if s.state is SessionState.RECEIVING)

    def claim(self, name: str) -> Session:
        """
        A proxy starts session C{name}.

        @return: The session its link fills.
        @raise SessionError: If the name is not a safe directory name, is
            taken, or C{maxSessions} sessions are in progress.
        """
        try:
            checkSessionDirName(name)
        except BadName as e:
            raise SessionError(str(e)) from None
        slot = self.slots.get(name)
        if slot is not None:
            current = slot.current
            if current.state is SessionState.RECEIVING:
                raise SessionError(f"session {name!r} is still in progress")
            if current.state is SessionState.COMPLETE:
                raise SessionError(
                    f"session {name!r} is complete and kept until its restore ended (and --retain passed)"
                )
        if self.inProgress >= self.maxSessions:
            raise SessionError(
                f"{self.inProgress} sessions are in progress, the most this cache takes at once (--max-sessions)"
            )
        if slot is None:
            slot = self._open(name)
        else:
            self.log.info("session {session}: failed earlier; starting again", session=name)
        session = slot.claim(name)
        self._claimObservers.tell(session)
        return session

    def _open(self, name: str) -> SessionSlot:
        slot = SessionSlot(
            lambda session: self._slotConsumed(name, slot, session),
            self._clock, self._retain, self._timer, renew=False,
        )
        try:
            self._opened(name, slot)
        except SessionError:
            raise
        except Exception as e:
            self.log.failure("session {session}: cannot open its directory", session=name)
            raise SessionError(f"session {name!r} cannot be served here: {e}") from None
        self.slots[name] = slot
        return slot

    def _slotConsumed(self, name: str, slot: SessionSlot, session: Session) -> None:
        if session is slot.current and self.slots.get(name) is slot:
            del self.slots[name]
            self._closed(name, slot)
        self._consumed(session)

    def stop(self) -> None:
        """
        The cache stops: sessions waiting for their retention time are
        consumed now (their slots closed), and from now on none is kept.
        """
        self._retain = 0.0
        for slot in list(self.slots.values()):
            slot.stop()
