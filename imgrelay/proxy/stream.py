# -*- test-case-name: tests.scenarios.test_resume,tests.proxy.test_link -*-
"""
One session's side of the link as the proxy keeps it across connections.

The session writes its messages and image bytes here once; they go out on
whichever connection to the cache is up, and stay in an L{OutboundLog} until
the cache reports it has taken them. When a connection breaks, the next one
resumes the session: the cache says how much of the session stream it has,
and only the rest is sent again. The log is bounded by a window: once that
much is unacknowledged, the session's pipes are held.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

from twisted.logger import Logger
from zope.interface import Interface, implementer

from imgrelay.core.observers import Observers
from imgrelay.wire.link import CREATE, MAX_CHUNK, VERDICT_VERSION, VERSION, ProxyMessage, chunkHeader, frame
from imgrelay.proxy.outbound import BadOffset, Buffer, OutboundLog
from imgrelay.wire.pb import link_pb2
from imgrelay.transport.pipes import PIPE_BLOCK, BufferRing
from imgrelay.transport.tcpinfo import Delivery
from imgrelay.proxy.session import ProxySession
from imgrelay.proxy.interfaces import ILinkSender
from imgrelay.proxy.compresspolicy import AutoPolicy, FixedPolicy
from imgrelay.proxy.packer import Compression, Packer, choose

#: The most session-stream bytes the proxy holds unacknowledged, by default.
DEFAULT_WINDOW = 64 << 20

#: How long a push back from the link's transport counts as the link being
#: the bottleneck, in seconds.
PUSHBACK_MEMORY = 0.05

#: The smallest window accepted: a few pipe reads.
MIN_WINDOW = 4 * PIPE_BLOCK


class IConnection(Interface):
    """
    A connection to the cache that a L{LinkStream} writes through.
    """

    def write(pieces: Sequence[Buffer]) -> None:
        """
        Send C{pieces}, in order, after everything written before.
        """

    def close() -> None:
        """
        Send what is written, then close.
        """

    def delivery() -> Optional[Delivery]:
        """
        @return: The kernel's latest measure of the connection's delivery,
            or None where there is none (not TCP, not Linux).
        """


@implementer(ILinkSender)
class LinkStream:
    """
    See the module docstring.

    @ivar session: The session carried.
    @ivar window: The most bytes held unacknowledged before the pipes are
        held (one pipe read per open image may pass it).
    @ivar token: The secret a resuming link presents.
    @ivar outbound: The unacknowledged session stream.
    @ivar ring: Read buffers for the session's pipes, free again once the
        cache has taken what was read into them.
    @ivar accepted: Whether the cache ever accepted the session.
    """

    log = Logger()

    def __init__(
        self, session: ProxySession, window: int = DEFAULT_WINDOW, compression: Optional[Compression] = None,
        verdict: bool = False,
    ) -> None:
        """
        @param session: The session to carry.
        @param window: See L{window}; at least L{MIN_WINDOW}.
        @param compression: How to compress, agreed with the cache when it
            first accepts; None for never.
        @param verdict: Speak version 2: the cache must restore the process
            itself and give its verdict on a verdict link afterwards
            (C{imgrelay migrate}).
        """
        if window < MIN_WINDOW:
            raise ValueError(f"window of {window} bytes is under {MIN_WINDOW}")
        self.session = session
        self.window = window
        self.token = session.linkToken = os.urandom(16)
        self.verdict = verdict
        self.outbound = OutboundLog()
        self.ring = BufferRing(
            lambda: self.outbound.acked, lambda: self.outbound.appended,
            keep=max(16, window // PIPE_BLOCK // 2),
        )
        self.accepted = False
        self.compression = compression
        self.packer: Optional[Packer] = None
        self._connection: Optional[IConnection] = None
        self._closes: dict[int, int] = {}
        self._ended = False
        self._linkObservers: Observers[bool] = Observers()

    @property
    def connected(self) -> bool:
        """
        Whether a connection accepted by the cache carries the session now.
        """
        return self._connection is not None

    def addLinkObserver(self, observer: Callable[[bool], None]) -> None:
        """
        Call C{observer} with True each time a connection is accepted, and
        with False each time the accepted connection is lost.
        """
        self._linkObservers.add(observer)

    def _tell(self, up: bool) -> None:
        self._linkObservers.tell(up)

    def hello(self) -> ProxyMessage:
        """
        @return: The hello a new connection opens with.
        """
        return ProxyMessage(
            hello=link_pb2.Hello(
                version=VERDICT_VERSION if self.verdict else VERSION, session=self.session.name,
                resume_token=self.token,
                resume=self.accepted, window=self.window,
            )
        )

    # The session stream.

    def _emit(self, pieces: Sequence[Buffer]) -> None:
        if self._ended:
            return
        self.outbound.append(pieces)
        if self._connection is not None:
            self._connection.write(pieces)
        if self.outbound.held >= self.window:
            self.session.hold("window")

    def sendOpen(self, image: int, snapshotId: str, name: str, mode: int = CREATE) -> None:
        """
        See L{ILinkSender.sendOpen}.
        """
        self._emit(
            [frame(ProxyMessage(open=link_pb2.ImageOpen(image=image, name=name, snapshot_id=snapshotId, mode=mode)))]  # type: ignore[arg-type]
        )

    def sendSnapshot(self, snapshotId: str) -> None:
        """
        See L{ILinkSender.sendSnapshot}.
        """
        self._emit([frame(ProxyMessage(snapshot=link_pb2.SnapshotPush(snapshot_id=snapshotId)))])

    def sendChunk(self, image: int, data: Buffer) -> None:
        """
        See L{ILinkSender.sendChunk}; C{data} must not change until the
        cache has taken it.
        """
        if not data:
            return
        self.session.bytesOnLink += len(data)
        if len(data) <= MAX_CHUNK:
            self._emit([chunkHeader(image, len(data)), data])
            return
        view = memoryview(data)
        for start in range(0, len(view), MAX_CHUNK):
            piece = view[start : start + MAX_CHUNK]
            self._emit([chunkHeader(image, len(piece)), piece])

    def sendPackedChunk(self, image: int, encoding: int, size: int, payload: bytes) -> None:
        """
        Send C{size} bytes of an image, encoded as C{payload}.
        """
        self.session.bytesOnLink += len(payload)
        header = link_pb2.Chunk(image=image, length=len(payload), encoding=encoding, size=size)  # type: ignore[arg-type]
        self._emit([frame(ProxyMessage(chunk=header)), payload])

    def delivery(self) -> Optional[Delivery]:
        """
        @return: The kernel's latest measure of the link's delivery, if a
            connection is up and has one.
        """
        connection = self._connection
        return None if connection is None else connection.delivery()

    @property
    def congested(self) -> bool:
        """
        Whether the link holds the stream back: its transport pushed back
        within the last L{PUSHBACK_MEMORY} seconds (the pipes are read only
        while it does not, so a chunk never arrives while it does), or a
        quarter of the window or more waits for the cache.
        """
        session = self.session
        if session.pushedBack is not None and session.clock() - session.pushedBack < PUSHBACK_MEMORY:
            return True
        return self.outbound.held >= self.window // 4

    def sendClose(self, image: int, size: int, crc: int) -> None:
        """
        See L{ILinkSender.sendClose}.
        """
        self._emit([frame(ProxyMessage(close=link_pb2.ImageClose(image=image, size=size, crc32c=crc)))])
        self._closes[image] = self.outbound.appended

    def sendDone(self, images: int, size: int, digest: bytes) -> None:
        """
        See L{ILinkSender.sendDone}.
        """
        self._emit([frame(ProxyMessage(done=link_pb2.Done(images=images, bytes=size, manifest_sha256=digest)))])

    def sendAbort(self, reason: str) -> None:
        """
        See L{ILinkSender.sendAbort}: only a connection up now can carry it;
        without one, the cache fails the session when no link resumes it.
        """
        self._ended = True
        connection = self._connection
        if connection is None:
            return
        connection.write([frame(ProxyMessage(abort=link_pb2.Abort(reason=reason)))])
        connection.close()

    # What the connections report.

    def attach(self, connection: IConnection, accept: link_pb2.Accept) -> None:
        """
        The cache accepted C{connection}: resume from what it has.
        """
        session = self.session
        if session.over or self._ended:
            connection.close()
            return
        received = accept.received
        try:
            resend = self.outbound.since(received)
            self.outbound.ack(received)
        except BadOffset as e:
            session.failed(f"cache cannot resume the session: {e}")
            connection.close()
            return
        previous, self._connection = self._connection, connection
        if previous is not None:
            previous.close()
        if not self.accepted:
            if self.verdict and not accept.restores:
                session.failed("the cache does not restore the process itself: start imgrelay-cache with --restore")
                connection.close()
                return
            self.accepted = True
            session.accepted(self._sender(list(accept.encodings)))
        else:
            # Every image whose close the cache has taken was verified (a
            # refused one fails the session, and it would not resume).
            verified = [i for i, end in self._closes.items() if end <= received]
            for imageId in verified:
                del self._closes[imageId]
                session.acked(imageId)
            self.log.info(
                "session {session}: link resumed; the cache has {received} bytes of the session "
                "stream, {resend} sent again; {open} images open there: {images}",
                session=session.name, received=received, resend=self.outbound.held,
                open=len(accept.open_images),
                images=", ".join(f"{p.image}: {p.bytes} bytes" for p in accept.open_images) or "none",
            )
            session.release("link")
        if resend:
            connection.write(resend)
        self._checkWindow()
        self._tell(True)

    def _sender(self, offered: list[int]) -> ILinkSender:
        """
        @return: What the session sends through: this stream, or a
            L{Packer} in front of it if the cache decodes what was asked.
        """
        if self.compression is None:
            return self
        codecs, why = choose(self.compression.mode, offered)
        self.log.info("session {session}: link compression {why}", session=self.session.name, why=why)
        if not codecs:
            return self
        policy = AutoPolicy(codecs) if self.compression.mode == "auto" else FixedPolicy(codecs[0])
        self.packer = Packer(self, self.session, policy, self.compression.run, self.session.clock)
        return self.packer

    def detach(self, connection: IConnection, reason: str) -> None:
        """
        C{connection} is gone; hold the pipes until another is accepted.
        """
        if connection is not self._connection:
            return
        self._connection = None
        session = self.session
        session.release("send")
        if not (session.over or self._ended):
            session.hold("link")
            self.log.warn(
                "session {session}: link to the cache lost ({reason}); {held} bytes unacknowledged, reconnecting",
                session=session.name, reason=reason, held=self.outbound.held,
            )
        self._tell(False)

    def progress(self, received: int) -> None:
        """
        The cache has taken the stream up to C{received}.
        """
        try:
            self.outbound.ack(received)
        except BadOffset as e:
            self.session.failed(f"cache reported impossible progress: {e}")
            return
        if self.packer is not None:
            self.packer.acked(received)
        self._checkWindow()

    def imageAcked(self, imageId: int) -> None:
        """
        The cache verified an image.
        """
        self._closes.pop(imageId, None)
        self.session.acked(imageId)

    def _checkWindow(self) -> None:
        if self.outbound.held < self.window:
            self.session.release("window")
