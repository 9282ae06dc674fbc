# -*- test-case-name: tests.cache.test_link,tests.cache.test_resume -*-
"""
The seams between the cache's link protocol and what it is given: the
resume table that keeps each session's stream across the links that carry
it, and whoever counts the open links.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from imgrelay.cache.resume import CacheStream
    from imgrelay.wire.link import CacheMessage
    from imgrelay.wire.pb import link_pb2


class IResumableLink(Interface):
    """
    A link carrying a session's stream, as the resume table sees it.
    """

    def replaced() -> None:
        """
        Another link resumed this one's session: drop this one.
        """


class IResumeTable(Interface):
    """
    Where each session's stream is kept across the links that carry it,
    for a proxy whose link broke to resume its session on a new one.
    """

    def started(stream: CacheStream, link: IResumableLink) -> None:
        """
        C{link} started a new session on C{stream}.
        """

    def knows(hello: link_pb2.Hello) -> bool:
        """
        @return: Whether C{hello} names a session kept here under the token
            it presents.
        """

    def resume(hello: link_pb2.Hello, link: IResumableLink) -> tuple[CacheStream, list[CacheMessage]]:
        """
        C{link} resumes the session C{hello} names; the link that carried
        it until now, if any, is L{replaced<IResumableLink.replaced>}.

        @return: The session's stream and the answers to send.
        @raise imgrelay.core.errors.ProtocolError: If there is no such
            session to resume here, or the session failed.
        """

    def linkLost(stream: CacheStream, link: IResumableLink, reason: Failure) -> None:
        """
        C{link}, which carried C{stream}, closed for C{reason}: unless
        another link carries it now, the session waits for its proxy to
        resume it.
        """


class IOpenLinks(Interface):
    """
    Whoever counts a cache's open links: each link says when it closed.
    """

    def linkClosed(link: object) -> None:
        """
        C{link}'s connection closed.
        """


class ILinkListener(Interface):
    """
    What a cache asks of the factory its link endpoint listens with,
    whichever link format it speaks.
    """

    def abortAll() -> None:
        """
        Reset every open link (the cache is stopping): sessions not
        complete fail.
        """

    def whenIdle() -> Deferred[None]:
        """
        @return: A Deferred that fires once no link is open and no session
            waits for its proxy to resume it.
        """
