# -*- test-case-name: tests.cache.test_resume,tests.scenarios.test_resume -*-
"""
Resuming a session on a new link: each session's stream (L{CacheStream})
outlives the link that carries it, and the L{ResumeTable} keeps it, under
its resume token, while its proxy dials again; a session whose proxy does
not come back in time fails.
"""

from __future__ import annotations

import hmac
from typing import Callable, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.cache.interfaces import IResumableLink, IResumeTable
from imgrelay.cache.linkstate import CacheLinkState
from imgrelay.cache.unpack import Decoder, StreamUnpacker, decodeInline
from imgrelay.core.errors import ProtocolError
from imgrelay.core.names import checkId
from imgrelay.core.store import Session, SessionState
from imgrelay.wire.link import CacheMessage, proxyMessageFramer
from imgrelay.wire.pb import link_pb2

#: How long the cache keeps a session whose link broke, for the proxy to
#: resume it: longer than the proxy's own 60 s, since either end may notice
#: a dead peer up to a minute after the other (see L{imgrelay.transport.keepalive}).
DEFAULT_RESUME_TIMEOUT = 120.0

#: Progress is reported this often when the proxy names no window.
DEFAULT_PROGRESS_STEP = 8 << 20


class CacheStream:
    """
    One session's stream as the cache reads it, across the links that
    carry it: the parser, the session's state, and how much of the stream
    has been taken.

    @ivar taken: Bytes of the session stream parsed so far.
    @ivar link: The link carrying it now, if any.
    @ivar expiry: While no link carries it, the timer that fails it if
        its proxy does not resume it in time.
    """

    def __init__(self, state: CacheLinkState, token: bytes, window: int, decoder: Decoder = decodeInline) -> None:
        """
        @param state: The session's state (it has taken the hello).
        @param token: What a resuming link must present.
        @param window: The proxy's window: progress is reported sixteen times
            per window.
        @param decoder: How its encoded chunks are decoded.
        """
        self.state = state
        self.unpacker = StreamUnpacker(self, decoder)
        self.framer = proxyMessageFramer(state.limits.maxHeaderSize)
        self.token = token
        self.taken = 0
        self._reported = 0
        self._step = max(window // 16, 1 << 20) if window else DEFAULT_PROGRESS_STEP
        self.link: Optional[IResumableLink] = None
        self.expiry: Optional[IDelayedCall] = None

    @property
    def session(self) -> Session:
        """
        @return: The session this stream fills.
        """
        assert self.state.session is not None
        return self.state.session

    def progress(self) -> Optional[CacheMessage]:
        """
        @return: A progress report, if enough was taken since the last one.
        """
        if self.taken - self._reported < self._step:
            return None
        self._reported = self.taken
        return CacheMessage(progress=link_pb2.Progress(received=self.taken))


@implementer(IResumeTable)
class ResumeTable:
    """
    The sessions of a cache's links that a proxy may resume: each one's
    stream from its hello until it completes, fails or expires. A session
    whose link broke waits L{timeout} seconds for its proxy to resume it,
    then fails.

    @ivar streams: Each session's stream, by session name.
    @ivar timeout: Seconds a session whose link broke waits for a resume.
    """

    log = Logger()

    def __init__(
        self, timeout: float = DEFAULT_RESUME_TIMEOUT, reactor: Optional[IReactorTime] = None,
        forgotten: Callable[[], None] = lambda: None,
    ) -> None:
        """
        @param timeout: Seconds a session whose link broke waits for its
            proxy to resume it before it fails.
        @param reactor: Where the expiry timers run; the global reactor by
            default.
        @param forgotten: Called each time a session leaves the table.
        """
        self.timeout = timeout
        self.streams: dict[str, CacheStream] = {}
        self._reactor = reactor
        self._forgotten = forgotten

    def awaitingResume(self) -> bool:
        """
        @return: Whether a session waits for its proxy to resume it: its
            link broke before the proxy had its last answer (a session
            already complete too, whose proxy may not have had the
            confirmation).
        """
        return any(stream.link is None for stream in self.streams.values())

    def _timers(self) -> IReactorTime:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        return reactor  # type: ignore[return-value]

    def started(self, stream: CacheStream, link: IResumableLink) -> None:
        """
        See L{IResumeTable.started}: an earlier session of the same name is
        forgotten.
        """
        old = self.streams.pop(stream.session.name or "", None)
        if old is not None:
            self._forget(old)
        self.streams[stream.session.name or ""] = stream
        stream.link = link

    def knows(self, hello: link_pb2.Hello) -> bool:
        """
        See L{IResumeTable.knows}.
        """
        stream = self.streams.get(hello.session)
        return stream is not None and bool(stream.token) and hmac.compare_digest(stream.token, hello.resume_token)

    def resume(self, hello: link_pb2.Hello, link: IResumableLink) -> tuple[CacheStream, list[CacheMessage]]:
        """
        See L{IResumeTable.resume}: the accept tells the proxy how much of
        the stream was taken and how far each open image got; a session
        already complete is confirmed again.

        @raise ProtocolError: If there is no such session to resume here, the
            token is wrong, or the session failed.
        """
        checkId("session name", hello.session)
        stream = self.streams.get(hello.session)
        if stream is None:
            raise ProtocolError(
                f"no session {hello.session!r} to resume here (it ended, expired, "
                "or this cache restarted)"
            )
        if not stream.token or not hmac.compare_digest(stream.token, hello.resume_token):
            raise ProtocolError(f"wrong resume token for session {hello.session!r}")
        session = stream.session
        if session.state is SessionState.FAILED:
            raise ProtocolError(f"session {hello.session!r} failed: {session.failure}")
        if stream.expiry is not None and stream.expiry.active():
            stream.expiry.cancel()
        stream.expiry = None
        old, stream.link = stream.link, link
        if old is not None:
            self.log.warn(
                "session {session}: a new link resumes it; dropping the old one", session=session.name,
            )
            old.replaced()
        self.log.info(
            "session {session}: proxy resumed the link at byte {taken} of the session stream",
            session=session.name, taken=stream.taken,
        )
        replies = [
            CacheMessage(accept=link_pb2.Accept(
                received=stream.taken, open_images=stream.state.openProgress(),
                encodings=stream.state.encodings,  # type: ignore[arg-type]
            ))
        ]
        if session.state is SessionState.COMPLETE:
            # The proxy did not get our confirmation.
            replies.append(CacheMessage(done_ok=link_pb2.DoneOk()))
        return stream, replies

    def linkLost(self, stream: CacheStream, link: IResumableLink, reason: Failure) -> None:
        """
        See L{IResumeTable.linkLost}: a session the proxy closed after our
        confirmation is forgotten; any other waits for a resume.
        """
        if stream.link is not link:
            return
        stream.link = None
        session = stream.session
        if session.state is SessionState.COMPLETE and reason.check(ConnectionDone):
            # The proxy closed after our confirmation: nothing to resume.
            self._forget(stream)
        elif self.streams.get(session.name or "") is stream:
            if not session.final:
                self.log.warn(
                    "session {session}: link lost ({reason}); waiting {timeout:g} s for the proxy to resume it",
                    session=session.name, reason=reason.getErrorMessage(), timeout=self.timeout,
                )
            why = reason.getErrorMessage()
            stream.expiry = self._timers().callLater(self.timeout, self._expire, stream, why)

    def _expire(self, stream: CacheStream, why: str) -> None:
        stream.expiry = None
        self._forget(stream)
        stream.state.lost(
            f"the proxy did not resume the session within {self.timeout:g} s "
            f"after its link was lost ({why})"
        )

    def _forget(self, stream: CacheStream) -> None:
        if stream.expiry is not None and stream.expiry.active():
            stream.expiry.cancel()
        stream.expiry = None
        name = stream.session.name or ""
        if self.streams.get(name) is stream:
            del self.streams[name]
            self._forgotten()

    def failAll(self, reason: str) -> None:
        """
        Forget every session, failing those not yet complete with
        C{reason} (the cache is shutting down).
        """
        for stream in list(self.streams.values()):
            self._forget(stream)
            stream.state.lost(reason)
