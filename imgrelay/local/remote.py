# -*- test-case-name: tests.local.test_remote -*-
"""
CRIU's original remote-images protocol (C{criu dump|pre-dump|restore
--remote}): one local connection per image operation, on
C{img-proxy.sock} (dump side) and C{img-cache.sock} (restore side).

The connection's header says what it is for (spec section 2): a write
(content on a passed pipe, or on the socket itself when the snapshot id is
empty), a read (answered with a local reply, then the content the same two
ways), FINISH, or the snapshot list ("parent"). L{RemoteProtocol} speaks it;
what a connection does to images is the business of an L{IRemoteBackend},
one for each side.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.wire.criu import ENOENT, FD_BYTE, O_APPEND, O_RDONLY, PARENT, PREFIX, localReply, snapshotListReply
from imgrelay.wire.criu import decodeLocalImageHeader, decodeSnapshotIdRecord
from imgrelay.core.errors import SessionError
from imgrelay.wire.framing import Framer, FramingError, HeaderReceived, PayloadChunk, PayloadDone
from imgrelay.core.interfaces import IOutgoingImage
from imgrelay.local.interfaces import IRemoteBackend
from imgrelay.core.limits import DEFAULT_IDLE_TIMEOUT, Limits
from imgrelay.local.admit import AdmittedProtocol, AdmittingFactory
from imgrelay.core.names import BadName, checkId, checkImageName
from imgrelay.wire.pb.criu_pb2 import LocalImageHeader, SnapshotIdRecord
from imgrelay.transport.pipes import PipeReader, PipeWriter
from imgrelay.core.store import Image

#: Content that runs to the socket's end: a payload longer than any.
_TO_EOF = 1 << 62


@implementer(IFileDescriptorReceiver)
class RemoteProtocol(AdmittedProtocol, TimeoutMixin):
    """
    One local connection of CRIU's remote protocol.

    @ivar expecting: What the bytes after the header are: C{"header"},
        C{"content"} (an image's content up to the socket's end),
        C{"records"} (snapshot ids up to the socket's end), C{"pipe"} (the
        byte of a passed pipe), or C{"nothing"}.
    """

    log = Logger()

    def __init__(
        self, backend: IRemoteBackend, reactor: Any, limits: Limits, closed: Callable[[], None],
        idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        """
        @param backend: What the operations do.
        @param reactor: Where pipes are read and written, and time kept.
        @param limits: The daemon's limits (the longest header or record,
            the longest image name).
        @param closed: Called once the connection closed.
        @param idleTimeout: How long a client may take to send its header
            and pipe; None for ever.
        """
        self._backend = backend
        self._reactor = reactor
        self._idleTimeout = idleTimeout
        self._limits = limits
        self._closed = closed
        self._framer: Framer[Any] = Framer(decodeLocalImageHeader, PREFIX, limits.maxHeaderSize)
        self._records: Framer[SnapshotIdRecord] = Framer(decodeSnapshotIdRecord, PREFIX, limits.maxHeaderSize)
        self._fds: deque[int] = deque()
        self.expecting = "header"
        self._what = "header"
        self._image: Optional[IOutgoingImage] = None
        self._writing = False
        self._held: list[bytes] = []
        self._heldFd: Optional[int] = None
        self._ended = False
        self._headerPending = False
        self._serving: Optional[Image] = None
        self._parsing = False
        self._done = False
        self.callLater = reactor.callLater  # type: ignore[method-assign]

    def connectionMade(self) -> None:
        """
        Hold the connection until the backend is ready; time out a client
        that sends no header.
        """
        self.setTimeout(self._idleTimeout)
        self._headerPending = True
        self._backend.connectionOpened()
        self._producer().pauseProducing()
        try:
            ready = self._backend.ready
        except SessionError as e:
            self._fail(str(e))
            return
        ready.addCallbacks(self._ready, self._notReady)

    def _ready(self, _: object) -> None:
        if not self._done:
            self._producer().resumeProducing()

    def _notReady(self, failure: Failure) -> None:
        if not self._done:
            self._fail(f"session failed: {failure.getErrorMessage()}")

    def timeoutConnection(self) -> None:
        """
        The client sent no complete header or pipe in time.
        """
        self._fail(f"nothing complete within {self._idleTimeout} s")

    def fileDescriptorReceived(self, descriptor: int) -> None:
        """
        A pipe arrived; its byte follows.
        """
        if self._done:
            os.close(descriptor)
        else:
            self._fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse the header, then whatever the operation carries.
        """
        if self._done:
            return
        self._parsing = True
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._header(event.message)
                elif isinstance(event, PayloadChunk):
                    self._payload(event.data)
                elif isinstance(event, PayloadDone):
                    self._pipeArrived()
                if self._done:
                    return
        except (FramingError, BadName, SessionError) as e:
            self._fail(str(e))
        finally:
            self._parsing = False

    def _fail(self, reason: str) -> None:
        self.log.error("remote connection, {what}: {reason}", what=self._what, reason=reason)
        if self._image is not None:
            # An image cut short is never taken as complete.
            self._image = None
            self._backend.abort(f"{self._what} failed: {reason}")
        self._finish(abort=True)

    def _finish(self, abort: bool = False) -> None:
        self._done = True
        self.setTimeout(None)
        while self._fds:
            os.close(self._fds.popleft())
        transport = self._transport()
        if abort:
            transport.abortConnection()  # type: ignore[attr-defined]
        else:
            transport.loseConnection()

    def _headerSeen(self) -> None:
        if self._headerPending:
            self._headerPending = False
            self._backend.headerDone()

    def _header(self, header: LocalImageHeader) -> None:
        try:
            self._handleHeader(header.name, header.snapshot_id, header.open_mode)
        finally:
            self._headerSeen()

    def _handleHeader(self, name: str, snapshotId: str, mode: int) -> None:
        checkId("snapshot id", snapshotId)
        if not name and not snapshotId:
            self._what = "finish"
            self._backend.finish(mode)
            self._framer.expectPayload(0)
            self._finish()
        elif name == PARENT and not snapshotId:
            if mode == O_RDONLY:
                self._what = "snapshot list read"
                self._noMore()
                self._backend.snapshots().addCallback(self._sendSnapshots)
            else:
                self._what = "snapshot list push"
                self._content("records")
        elif mode != O_RDONLY:
            checkImageName(name, self._limits.maxNameLength)
            self._what = f"write of {snapshotId}/{name}"
            self._writing = True
            if snapshotId:
                self.expecting = "pipe"
                self._framer.expectPayload(1)
            else:
                self._content("content")
            # Nothing more is read until the image may be written.
            self._producer().pauseProducing()
            self._backend.openImage(snapshotId, name, bool(mode & O_APPEND)).addCallbacks(
                self._imageOpened, self._imageRefused
            )
        else:
            checkImageName(name, self._limits.maxNameLength)
            self._what = f"read of {snapshotId}/{name}"
            self._noMore()
            self._backend.readImage(snapshotId, name).addCallback(self._answerRead, snapshotId)

    def _content(self, what: str) -> None:
        # Bytes up to the socket's end; the client is no longer idle.
        self.expecting = what
        self._framer.expectPayload(_TO_EOF)
        self.setTimeout(None)

    def _noMore(self) -> None:
        # Nothing is to be read until the answer went out.
        self.expecting = "nothing"
        self.setTimeout(None)
        self._producer().pauseProducing()

    def _imageOpened(self, image: IOutgoingImage) -> None:
        if self._heldFd is not None:
            # The pipe came (and maybe the socket closed) while this version
            # waited for its turn.
            fd, self._heldFd = self._heldFd, None
            self._readPipe(image, fd)
            return
        if self.expecting == "content":
            held, self._held = self._held, []
            for data in held:
                image.write(data)
            if self._ended:
                image.close()
                return
        if self._done:
            # The connection failed before the content could flow.
            reason = f"{self._what}: the connection ended before its content"
            self.log.error("remote connection: {reason}", reason=reason)
            self._backend.abort(reason)
            return
        self._image = image
        if self.expecting == "content":
            image.attachProducer(self._producer())
        self._producer().resumeProducing()
        if not self._parsing:
            self.dataReceived(b"")

    def _imageRefused(self, failure: Failure) -> None:
        if not self._done:
            self._fail(failure.getErrorMessage())

    def _payload(self, data: memoryview) -> None:
        if self.expecting == "content":
            if self._image is None:
                self._held.append(bytes(data))
            else:
                self._image.write(bytes(data))
        elif self.expecting == "records":
            for event in self._records.feed(bytes(data)):
                if isinstance(event, HeaderReceived):
                    checkId("snapshot id", event.message.snapshot_id)
                    self._backend.pushSnapshot(event.message.snapshot_id)
        elif bytes(data) != FD_BYTE:
            raise FramingError(f"expected the 0x00 byte of a passed pipe, got {bytes(data)!r}")

    def _pipeArrived(self) -> None:
        if not self._fds:
            raise FramingError("the pipe's byte came without a pipe")
        fd = self._fds.popleft()
        self.expecting = "nothing"
        if self._writing:
            if self._image is None:
                # The image may not be written yet: its pipe waits, full.
                self._heldFd = fd
                return
            self._readPipe(self._image, fd)
            return
        else:
            served = self._serving
            assert served is not None
            writer = PipeWriter(fd, self._reactor, served.data.pieces, lambda error: self._written(served, error))
            writer.startWriting()
        # The pipe carries the rest: this connection has done its part.
        self._finish()

    def _readPipe(self, image: IOutgoingImage, fd: int) -> None:
        self._image = None
        reader = PipeReader(
            fd, self._reactor, image.write, lambda error: self._pipeEnded(image, error),
            ring=image.ring,
        )
        image.attachProducer(reader)
        self._finish()

    def _pipeEnded(self, image: IOutgoingImage, error: Optional[Exception]) -> None:
        if error is not None:
            reason = f"reading the pipe of {image.name} failed: {error}"
            self.log.error("remote write: {reason}", reason=reason)
            self._backend.abort(reason)
        else:
            image.close()

    def _written(self, image: Image, error: Optional[Exception]) -> None:
        if error is not None:
            self.log.error("remote read of {name}: writing its pipe failed: {error}", name=image.name, error=str(error))

    def _answerRead(self, image: Optional[Image], snapshotId: str) -> None:
        if self._done:
            return
        transport = self._transport()
        if image is None:
            transport.write(localReply(ENOENT))
            self._finish()
        elif snapshotId:
            transport.write(localReply(0))
            self._serving = image
            self.expecting = "pipe"
            self._framer.expectPayload(1)
            self.setTimeout(self._idleTimeout)
            self._producer().resumeProducing()
            if not self._parsing:
                self.dataReceived(b"")
        else:
            transport.writeSequence([localReply(0)] + [bytes(p) for p in image.data.pieces])
            self._finish()

    def _sendSnapshots(self, snapshots: Optional[list[str]]) -> None:
        if self._done:
            return
        self._transport().write(snapshotListReply(snapshots))
        self._finish()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        Content on the socket ends with the socket; anything else cut short
        is an error.
        """
        self._closed()
        self._headerSeen()
        self.setTimeout(None)
        while self._fds:
            os.close(self._fds.popleft())
        if self._done:
            return
        image, self._image = self._image, None
        if self.expecting == "content":
            if image is not None:
                self._done = True
                image.close()
            else:
                # Its version has not begun yet: it ends once it has.
                self._ended = True
            return
        self._done = True
        if self._heldFd is not None:
            # The connection's part is done: the pipe waits for its turn.
            return
        elif self.expecting == "records" and not self._records.atBoundary:
            self.log.error("remote snapshot list push ended inside a record")
        elif self.expecting in ("header", "pipe") and not self._framer.atBoundary or image is not None:
            self.log.error("remote connection ended early, {what}", what=self._what)
            if image is not None:
                self._backend.abort(f"{self._what} ended before its pipe came")


class RemoteFactory(AdmittingFactory[RemoteProtocol]):
    """
    Serve a remote-protocol socket for a backend.
    """

    def __init__(
        self, backend: IRemoteBackend, reactor: Any, limits: Limits, idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT
    ) -> None:
        """
        @param backend: What the operations do.
        @param reactor: Where pipes are read and written, and time kept.
        @param limits: The daemon's limits.
        @param idleTimeout: How long a client may take to send its header
            and pipe; None for ever.
        """
        AdmittingFactory.__init__(self, limits)
        self.backend = backend
        self.reactor = reactor
        self.idleTimeout = idleTimeout

    def buildAdmitted(self, closed: Callable[[], None]) -> RemoteProtocol:
        """
        @return: A protocol for one local connection.
        """
        return RemoteProtocol(self.backend, self.reactor, self.limits, closed, self.idleTimeout)
