# -*- test-case-name: tests.cache.test_link,tests.scenarios.test_resume -*-
"""
The cache's link listener: L{CacheLinkFactory} builds a
L{CacheLinkProtocol} for each link from a proxy, counts the links open, and
keeps the sessions whose link broke for their proxies to resume
(L{ResumeTable}).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from zope.interface import implementer

from imgrelay.cache.interfaces import ILinkListener, IOpenLinks
from imgrelay.cache.memory import MemoryBound
from imgrelay.cache.resume import DEFAULT_RESUME_TIMEOUT, ResumeTable
from imgrelay.core.interfaces import ISessionClaims
from imgrelay.core.limits import Limits

#: How much the cache reads from the link at once.
READ_SIZE = 1 << 20
from imgrelay.cache.unpack import Decoder, decodeInline
from imgrelay.cache.verdicts import RestoreJobs
from imgrelay.cache.link import CacheLinkProtocol


@implementer(IOpenLinks, ILinkListener)
class CacheLinkFactory(Factory):
    """
    Accept links from proxies into sessions they claim (an images
    directory's L{imgrelay.core.store.SessionSlot}, or a registry), and keep
    each session whose link broke for a while, for its proxy to resume it
    (its L{ResumeTable}).

    @ivar resumes: The sessions its links' proxies may resume.
    @ivar links: The links open now.
    """

    def __init__(
        self, slot: ISessionClaims, clock: Callable[[], float] = time.monotonic, reactor: Any = None,
        verbose: bool = False, limits: Limits = Limits(), resumeTimeout: float = DEFAULT_RESUME_TIMEOUT,
        bound: Optional[MemoryBound] = None, idleTimeout: Optional[float] = None, heartbeat: float = 0.0,
        decoder: Decoder = decodeInline, restores: Optional[RestoreJobs] = None,
    ) -> None:
        """
        @param slot: Where sessions are claimed.
        @param clock: The time, for rates.
        @param reactor: Where sockets are read and timers run; the global
            reactor by default.
        @param verbose: Log every image, not only large ones.
        @param limits: Images and bytes a session may bring.
        @param resumeTimeout: Seconds a session whose link broke waits for
            its proxy to resume it before it fails.
        @param bound: The cache's memory bound; none by default.
        @param idleTimeout: Seconds a new link may take to say hello, or
            None for no limit.
        @param heartbeat: Seconds between the progress reports each link
            sends while quiet (0: none); see L{CacheLinkProtocol}.
        @param decoder: How encoded chunks are decoded.
        @param restores: With C{--restore}: the restores it runs.
        """
        self.restores = restores
        self.decoder = decoder
        self.heartbeat = heartbeat
        self.idleTimeout = idleTimeout
        self.bound = bound if bound is not None else MemoryBound()
        self.limits = limits
        self.slot = slot
        self.clock = clock
        self.reactor = reactor
        self.verbose = verbose
        self.resumes = ResumeTable(resumeTimeout, reactor, self._checkIdle)
        self.links: set[CacheLinkProtocol] = set()
        self._idleWaiters: list[Deferred[None]] = []

    def linkClosed(self, link: object) -> None:
        """
        See L{IOpenLinks.linkClosed}: see L{whenIdle}.
        """
        self.links.discard(link)
        self._checkIdle()

    def _idle(self) -> bool:
        return not self.links and not self.resumes.awaitingResume()

    def _checkIdle(self) -> None:
        if self._idle():
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def abortAll(self) -> None:
        """
        Close every link at once (the cache is shutting down); their
        sessions not yet complete fail, with those waiting for a resume.
        """
        for link in list(self.links):
            link.abort()
        self.resumes.failAll("the cache is shutting down")

    def whenIdle(self) -> Deferred[None]:
        """
        @return: A Deferred that fires once no link is open and no session
            waits for its proxy to resume it: every proxy had the last
            answer it can get (a proxy whose link broke during the final
            handshake resumes to hear the confirmation again).
        """
        if self._idle():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        return d

    noisy = False

    def buildProtocol(self, addr: object) -> CacheLinkProtocol:
        """
        @return: A protocol for one link, sharing this factory's resume
            table and telling it when it closes.
        """
        p = CacheLinkProtocol(
            self.slot, self.clock, self.reactor, self.verbose, self.limits, self.bound,
            resumes=self.resumes, links=self, idleTimeout=self.idleTimeout, heartbeat=self.heartbeat,
            decoder=self.decoder, restores=self.restores,
        )
        p.factory = self
        self.links.add(p)
        return p
