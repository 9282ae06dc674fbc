# -*- test-case-name: tests.cache.test_memory -*-
"""
The cache's memory bound (C{--max-memory}): when the image bytes it holds
reach the bound, it stops reading every link that brings more, so the
proxies' windows fill and CRIU's pipes wait, and it reads again once memory
is freed (a session restored and released, or failed).

Memory is freed only when a session ends. Near the bound only the oldest
session in progress is read, so that it can complete; if the bound is
reached while no session is complete, none ever will be: the newest session
in progress is then failed, with a reason naming the bound, so the others
can go on (a single image or session larger than the bound fails this way
instead of waiting forever).

Bytes are counted as they arrive, per session, and freed all at once with
the session: a version replaced by a later one stays counted until then.
"""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger
from zope.interface import Interface

from imgrelay.core.store import Session, SessionState


class IBoundReader(Interface):
    """
    A link the memory bound can hold.
    """

    def pauseReading() -> None:
        """
        Stop reading the link until L{resumeReading}.
        """

    def resumeReading() -> None:
        """
        Read the link again.
        """

    def dropSession(reason: str) -> None:
        """
        Fail the session this link carries, telling its proxy C{reason}.
        """

    def carries() -> Optional[Session]:
        """
        @return: The session this link brings, if any.
        """


class MemoryBound:
    """
    See the module docstring.

    Past three quarters of the bound, only the link of the oldest session
    in progress is read, so that one session completes (and can be restored
    and released) rather than all of them stalling half-way; at the bound,
    none is.

    @ivar limit: The most image bytes held, or None for no bound.
    @ivar held: Image bytes held now.
    @ivar peak: The most image bytes held at once so far.
    """

    log = Logger()

    def __init__(self, limit: Optional[int] = None) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._charged: dict[Session, int] = {}
        self._watched: set[Session] = set()
        self._readers: set[IBoundReader] = set()
        self._paused: set[IBoundReader] = set()
        self._state = "open"

    @property
    def soft(self) -> Optional[int]:
        """
        @return: Where only the oldest session's link is read any more.
        """
        return None if self.limit is None else self.limit - self.limit // 4

    @property
    def paused(self) -> bool:
        """
        Whether any link is held.
        """
        return bool(self._paused)

    def addReader(self, reader: IBoundReader) -> None:
        """
        A link opened; held at once if the bound says so.
        """
        self._readers.add(reader)
        session = reader.carries()
        if session is not None:
            self._watch(session)
        self._update()

    def removeReader(self, reader: IBoundReader) -> None:
        """
        A link closed.
        """
        self._readers.discard(reader)
        self._paused.discard(reader)

    def charge(self, session: Session, n: int) -> None:
        """
        C{n} more bytes of C{session}'s images arrived.
        """
        if session not in self._charged:
            self._charged[session] = 0
            self._watch(session)
        self._charged[session] += n
        self.held += n
        if self.held > self.peak:
            self.peak = self.held
        # Which links are read changes only with the state here; readers
        # and sessions that come or end update it themselves.
        if self._stateFor(self.held) != self._state:
            self._update()

    def _watch(self, session: Session) -> None:
        """
        Update the bound when C{session} completes or fails.
        """
        if session not in self._watched and not session.final:
            self._watched.add(session)
            session.addFinalObserver(self._final)

    def _final(self, session: Session) -> None:
        self._watched.discard(session)
        if session.state is SessionState.FAILED:
            self.free(session)
        else:
            # Complete: another session is now the oldest in progress.
            self._update()

    def free(self, session: Session) -> None:
        """
        C{session}'s images are gone (it failed, or was restored and
        released).
        """
        self.held -= self._charged.pop(session, 0)
        self._update()

    def _oldestInProgress(self) -> Optional[Session]:
        # Sessions whose bytes are counted, and those whose links were held
        # before any byte of theirs was: they are in progress too.
        carried = (r.carries() for r in self._readers)
        inProgress = [s for s in {*self._charged, *carried} if s is not None and not s.final]
        return min(inProgress, key=lambda s: (s.started or 0.0, id(s))) if inProgress else None

    def _stateFor(self, held: int) -> str:
        limit, soft = self.limit, self.soft
        if limit is None or soft is None or held < soft:
            return "open"
        return "oldest" if held < limit else "closed"

    def _update(self) -> None:
        if self.limit is None:
            return
        state = self._stateFor(self.held)
        if state == "open":
            allowed = self._readers
        elif state == "oldest":
            oldest = self._oldestInProgress()
            allowed = {r for r in self._readers if oldest is not None and r.carries() is oldest}
        else:
            allowed = set()
        if state != self._state:
            self._logState(state)
            self._state = state
        for reader in list(self._readers):
            if reader in allowed and reader in self._paused:
                self._paused.discard(reader)
                reader.resumeReading()
            elif reader not in allowed and reader not in self._paused:
                self._paused.add(reader)
                reader.pauseReading()
        if state == "closed":
            self._unstick()

    def _logState(self, state: str) -> None:
        fields = dict(held=self.held, limit=self.limit)
        if state == "closed":
            self.log.warn(
                "memory bound reached: {held} bytes of images held, --max-memory {limit}; "
                "reading no link until memory is freed", **fields,
            )
        elif state == "oldest":
            self.log.warn(
                "memory bound near: {held} bytes of images held, --max-memory {limit}; "
                "reading only the oldest session's link until memory is freed", **fields,
            )
        else:
            self.log.info(
                "memory freed: {held} bytes of images held, --max-memory {limit}; reading every link", **fields,
            )

    def _unstick(self) -> None:
        """
        With every link held, fail the newest session in progress if no
        session is complete (nothing would ever free memory).
        """
        if any(s.state is SessionState.COMPLETE for s in self._charged):
            return
        inProgress = [s for s in self._charged if not s.final]
        if not inProgress:
            return
        newest = max(inProgress, key=lambda s: (s.started or 0.0, id(s)))
        reason = (
            f"the cache's memory bound is reached ({self.held} bytes of images held, "
            f"--max-memory {self.limit}) and no session is complete to free memory: "
            f"session {newest.name!r} is dropped (an image or session larger than the bound "
            "cannot be received)"
        )
        self.log.error("{reason}", reason=reason)
        for reader in [r for r in self._readers if r.carries() is newest]:
            reader.dropSession(reason)
        # Failing it frees its memory, which updates the bound again.
        newest.fail(reason, "other")
