# -*- test-case-name: tests.observe.test_stats -*-
"""
What a daemon counts of its sessions: per session images, bytes, rate,
snapshots and failure cause; per daemon totals by outcome and error kind.

Nothing here does I/O or reads a clock of its own: the daemon's feeds tell
it what happened, and it tells its listeners (the status fd, the stats file,
the end-of-session log line) of each lifecycle event.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

import attrs

#: Error kinds counted even while none happened.
ERROR_KINDS = ("checksum", "protocol", "other")

#: Session outcomes counted.
OUTCOMES = ("complete", "failed")

#: How many ended sessions the status document still shows.
KEEP_ENDED = 16

#: A live reading of a session still in progress: (bytes, images open).
Probe = Callable[[], "tuple[int, int]"]


@attrs.define
class SnapshotStats:
    """
    What one snapshot of a session brought.

    @ivar images: Images verified.
    @ivar bytes: Their bytes.
    """

    images: int = 0
    bytes: int = 0


@attrs.define(eq=False)
class SessionStats:
    """
    One session's counters.

    @ivar name: The session's name.
    @ivar state: C{receiving} or C{sending} while active, then C{complete}
        or C{failed}.
    @ivar started: When it started (the daemon's clock).
    @ivar ended: When it ended, or None.
    @ivar images: Images verified (each version of a replaced image counts).
    @ivar open: Images in flight, at the last reading.
    @ivar bytes: Bytes arrived, at the last reading.
    @ivar rate: Bytes per second over the last sampling interval; 0 once
        over.
    @ivar error: Why it failed, or None.
    @ivar snapshots: Per snapshot id, in order of first appearance.
    @ivar probe: Reads live bytes and open images; dropped once over.
    @ivar linkBytes: What the image bytes came to on the link, compressed
        or not, at the last reading; None where not counted.
    @ivar linkProbe: Reads C{linkBytes}; dropped once over.
    """

    name: str
    state: str
    started: float
    ended: Optional[float] = None
    images: int = 0
    open: int = 0
    bytes: int = 0
    rate: float = 0.0
    error: Optional[str] = None
    snapshots: dict[str, SnapshotStats] = attrs.Factory(dict)
    probe: Optional[Probe] = None
    linkBytes: Optional[int] = None
    linkProbe: Optional[Callable[[], int]] = None
    _sampledBytes: int = 0
    _sampledAt: float = 0.0

    @property
    def active(self) -> bool:
        """
        Whether the session is still in progress.
        """
        return self.ended is None

    def refresh(self) -> None:
        """
        Read the live bytes and open images, if there is a probe.
        """
        if self.probe is not None:
            self.bytes, self.open = self.probe()
        if self.linkProbe is not None:
            self.linkBytes = self.linkProbe()

    @property
    def ratio(self) -> Optional[float]:
        """
        @return: Image bytes per byte on the link (above 1 when compression
            saved some), or None before any or where not counted.
        """
        return self.bytes / self.linkBytes if self.linkBytes else None

    def seconds(self, now: float) -> float:
        """
        @return: How long it ran, or, still active, has run until C{now}.
        """
        return (self.ended if self.ended is not None else now) - self.started

    def averageRate(self) -> float:
        """
        @return: Bytes per second over the whole session (0 for no time, or
            while it is still in progress).
        """
        seconds = self.seconds(self.started)
        return self.bytes / seconds if seconds > 0 else 0.0

    def record(self) -> dict[str, Any]:
        """
        @return: The end-of-session record: outcome, images, bytes, seconds,
            average rate, failure cause and per-snapshot images and bytes.
        """
        return {
            "session": self.name,
            "outcome": self.state,
            "images": self.images,
            "bytes": self.bytes,
            "seconds": self.seconds(self.started),
            "rate": self.averageRate(),
            "error": self.error,
            "snapshots": {k: {"images": v.images, "bytes": v.bytes} for k, v in self.snapshots.items()},
            "ended": self.ended,
            "link_bytes": self.linkBytes,
            "ratio": self.ratio,
        }

    def status(self, now: float) -> dict[str, Any]:
        """
        @return: This session's entry in the status document.
        """
        return {
            "name": self.name,
            "state": self.state,
            "images": self.images,
            "open": self.open,
            "bytes": self.bytes,
            "link_bytes": self.linkBytes,
            "ratio": self.ratio,
            "rate": self.rate,
            "seconds": self.seconds(now),
            "error": self.error,
            "snapshots": [s for s in self.snapshots if s],
        }


#: A listener's signature: the event (C{first-image}, C{complete} or
#: C{failed}) and the session it is about.
Listener = Callable[[str, SessionStats], None]


class DaemonStats:
    """
    The sessions and totals of one daemon.

    @ivar daemon: C{"cache"} or C{"proxy"}.
    @ivar active: Sessions in progress, oldest first.
    @ivar ended: The last L{KEEP_ENDED} sessions that ended, oldest first.
    @ivar images: Images verified, all sessions together.
    @ivar outcomes: Sessions ended, by outcome.
    @ivar errors: Failed sessions, by kind of error.
    @ivar held: Reads the bytes the daemon holds in memory now.
    """

    def __init__(
        self, daemon: str, clock: Callable[[], float], version: str = "",
        held: Callable[[], int] = lambda: 0,
    ) -> None:
        """
        @param daemon: C{"cache"} or C{"proxy"}.
        @param clock: The time, in seconds.
        @param version: imgrelay's version, for the status document.
        @param held: Reads the bytes held in memory now.
        """
        self.daemon = daemon
        self.version = version
        self.held = held
        self._clock = clock
        self.started = clock()
        self.active: list[SessionStats] = []
        self.ended: deque[SessionStats] = deque(maxlen=KEEP_ENDED)
        self.images = 0
        self._endedBytes = 0
        self._endedLinkBytes = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.errors = dict.fromkeys(ERROR_KINDS, 0)
        self._listeners: list[Listener] = []

    def addListener(self, listener: Listener) -> None:
        """
        Call C{listener} with each session event: C{first-image} when a
        session's first image is verified, C{complete}, C{failed}.
        """
        self._listeners.append(listener)

    def _tell(self, event: str, session: SessionStats) -> None:
        for listener in self._listeners:
            listener(event, session)

    @property
    def bytes(self) -> int:
        """
        @return: Bytes arrived, all sessions together (ended ones, and
            active ones at their last reading).
        """
        return self._endedBytes + sum(s.bytes for s in self.active)

    @property
    def linkBytes(self) -> int:
        """
        What the image bytes of every session came to on the link.
        """
        return self._endedLinkBytes + sum(s.linkBytes or 0 for s in self.active)

    def begin(
        self, name: str, state: str, probe: Optional[Probe] = None, link: Optional[Callable[[], int]] = None,
    ) -> SessionStats:
        """
        A session started.

        @param name: Its name.
        @param state: Its active state: C{receiving} or C{sending}.
        @param probe: Reads its live bytes and open images.
        @param link: Reads what its image bytes came to on the link.
        @return: Its counters, to pass to the other methods.
        """
        now = self._clock()
        session = SessionStats(name, state, now, probe=probe, linkProbe=link, sampledAt=now)
        self.active.append(session)
        return session

    def imageVerified(self, session: SessionStats, snapshotId: str, size: int) -> None:
        """
        An image of C{session} was verified.
        """
        session.images += 1
        self.images += 1
        snapshot = session.snapshots.get(snapshotId)
        if snapshot is None:
            snapshot = session.snapshots[snapshotId] = SnapshotStats()
        snapshot.images += 1
        snapshot.bytes += size
        if session.images == 1:
            self._tell("first-image", session)

    def complete(
        self, session: SessionStats, images: Optional[int] = None, bytes: Optional[int] = None
    ) -> None:
        """
        C{session} completed.

        @param images: Its images, when they were not counted one by one.
        @param bytes: Its bytes, when there is no probe.
        """
        if images is not None and images > session.images:
            self.images += images - session.images
            session.images = images
        self._end(session, "complete", bytes)

    def fail(self, session: SessionStats, cause: str, kind: str = "other") -> None:
        """
        C{session} failed.

        @param cause: Why.
        @param kind: C{checksum}, C{protocol} or C{other}.
        """
        if not session.active:
            return
        session.error = cause
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self._end(session, "failed", None)

    def _end(self, session: SessionStats, outcome: str, bytes: Optional[int]) -> None:
        if not session.active:
            return
        session.refresh()
        if bytes is not None:
            session.bytes = bytes
        session.probe = session.linkProbe = None
        session.open = 0
        session.rate = 0.0
        session.state = outcome
        session.ended = self._clock()
        self.active.remove(session)
        self.ended.append(session)
        self._endedBytes += session.bytes
        self._endedLinkBytes += session.linkBytes or 0
        self.outcomes[outcome] += 1
        self._tell(outcome, session)

    def sample(self) -> list[SessionStats]:
        """
        Read every active session and work out its rate since the last
        sample.

        @return: The active sessions.
        """
        now = self._clock()
        for session in self.active:
            session.refresh()
            elapsed = now - session._sampledAt
            if elapsed > 0:
                session.rate = (session.bytes - session._sampledBytes) / elapsed
                session._sampledBytes = session.bytes
                session._sampledAt = now
        return list(self.active)

    def refresh(self) -> None:
        """
        Read every active session's live bytes and open images.
        """
        for session in self.active:
            session.refresh()

    def status(self) -> dict[str, Any]:
        """
        @return: The status document (see C{docs/observability.md}).
        """
        now = self._clock()
        self.refresh()
        return {
            "daemon": self.daemon,
            "version": self.version,
            "uptime": now - self.started,
            "sessions": [s.status(now) for s in [*self.ended, *self.active]],
            "totals": {
                "bytes": self.bytes,
                "link_bytes": self.linkBytes,
                "images": self.images,
                "sessions": dict(self.outcomes),
                "errors": dict(self.errors),
                "active": len(self.active),
                "held": self.held(),
            },
        }
