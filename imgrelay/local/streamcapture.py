# -*- test-case-name: tests.local.test_streamcapture,tests.scenarios.test_stream,tests.scenarios.test_fuzz -*-
"""
The proxy's local side for CRIU's C{--stream} dump: CRIU connects to
C{DIR/streamer-capture.sock}, names each image and passes the read end of a
pipe, then writes the image into it. Each pipe is read on the reactor and
sent on as it arrives.

CRIU closes the socket the same way whether its dump succeeded or failed;
a dump that succeeded wrote C{inventory.img}, last. A dump connection that
closes without it gives the session up, so the cache never holds the
images of a failed dump as a complete session.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Callable, Optional

from twisted.internet.interfaces import IFileDescriptorReceiver, IReactorFDSet
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.wire.criu import FD_BYTE, INVENTORY, streamCaptureFramer
from imgrelay.core.errors import SessionError
from imgrelay.wire.framing import FramingError, HeaderReceived, PayloadChunk, PayloadDone
from imgrelay.core.interfaces import IImageSink, IOutgoingImage
from imgrelay.core.limits import Limits
from imgrelay.local.admit import AdmittedProtocol, AdmittingFactory
from imgrelay.core.names import BadName
from imgrelay.transport.pipes import PipeReader


@implementer(IFileDescriptorReceiver)
class StreamCaptureProtocol(AdmittedProtocol):
    """
    One C{criu dump --stream} connection: one session.
    """

    log = Logger()

    def __init__(
        self, newSession: Callable[[], IImageSink], reactor: IReactorFDSet, limits: Limits, closed: Callable[[], None]
    ) -> None:
        """
        @param newSession: Starts the session this dump fills.
        @param reactor: Where the pipes are read.
        @param limits: The daemon's limits (the longest request header).
        @param closed: Called once the connection closed.
        """
        self._newSession = newSession
        self._reactor = reactor
        self._closed = closed
        self._framer = streamCaptureFramer(limits.maxHeaderSize)
        self._fds: deque[int] = deque()
        self._name: Optional[str] = None
        self._readers: set[PipeReader] = set()
        self._failed = False
        self._sawInventory = False
        self.sink: Optional[IImageSink] = None

    def connectionMade(self) -> None:
        """
        Start the session; hold CRIU's requests until the cache accepted it.
        """
        self._producer().pauseProducing()
        try:
            sink = self.sink = self._newSession()
        except SessionError as e:
            self.log.error("dump connection refused: {reason}", reason=str(e))
            self._failed = True
            self._transport().loseConnection()
            return
        except Exception:
            self.log.failure("dump connection: cannot start a session")
            self._failed = True
            self._transport().loseConnection()
            return
        sink.ready.addCallbacks(lambda _: self._producer().resumeProducing(), lambda _: None)
        sink.result.addErrback(self._sessionFailed)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        """
        A pipe arrived; its request and byte are in the data that follows.
        """
        if self._failed:
            os.close(descriptor)
            return
        self._fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse requests and pair each with its pipe.
        """
        if self._failed:
            return
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._name = event.message.filename
                elif isinstance(event, PayloadChunk):
                    if bytes(event.data) != FD_BYTE:
                        raise FramingError(f"expected the 0x00 byte of a passed pipe, got {bytes(event.data)!r}")
                elif isinstance(event, PayloadDone):
                    self._startImage()
        except (FramingError, BadName, SessionError) as e:
            self._error(str(e))

    def _startImage(self) -> None:
        name, self._name = self._name, None
        assert name is not None and self.sink is not None
        if not self._fds:
            raise FramingError(f"request for {name!r} came without a pipe")
        fd = self._fds.popleft()
        if name == INVENTORY:
            self._sawInventory = True
        try:
            image = self.sink.openImage("", name)
        except BaseException:
            os.close(fd)
            raise
        reader = PipeReader(
            fd, self._reactor, image.write, lambda err: self._pipeEnded(image, reader, err),
            ring=image.ring,
        )
        self._readers.add(reader)
        image.attachProducer(reader)

    def _pipeEnded(self, image: IOutgoingImage, reader: PipeReader, error: Optional[Exception]) -> None:
        self._readers.discard(reader)
        if error is not None:
            self._error(f"reading the pipe of {image.name!r} failed: {error}")
        else:
            image.close()

    def _error(self, reason: str) -> None:
        self.log.error("dump connection: {reason}", reason=reason)
        if self.sink is not None:
            self.sink.abort(reason)
        self._cleanUp()

    def _sessionFailed(self, failure: Failure) -> None:
        self._cleanUp()

    def _cleanUp(self) -> None:
        if self._failed:
            return
        self._failed = True
        for reader in list(self._readers):
            reader.abort()
        self._readers.clear()
        self._closeFds()
        self._transport().loseConnection()

    def _closeFds(self) -> None:
        while self._fds:
            os.close(self._fds.popleft())

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        CRIU closed the socket: no more images. Pipes still open go on to
        their own end, then the session's final handshake runs.
        """
        self._closed()
        self._closeFds()
        if self._failed or self.sink is None:
            return
        if not self._framer.atBoundary:
            self._error("dump connection ended in the middle of a request")
            return
        if not self._sawInventory:
            # CRIU closes the socket the same way after a failed dump; only
            # a dump that succeeded wrote its inventory, last.
            self._error(f"CRIU's dump ended without {INVENTORY}: the dump failed (see CRIU's log), the session is given up")
            return
        self.log.info("dump connection closed; {open} pipes still open", open=len(self._readers))
        self.sink.finish()


class StreamCaptureFactory(AdmittingFactory[StreamCaptureProtocol]):
    """
    Serve C{streamer-capture.sock}: a session per dump connection.
    """

    def __init__(self, newSession: Callable[[], IImageSink], reactor: IReactorFDSet, limits: Limits) -> None:
        """
        @param newSession: Starts a session for each dump.
        @param reactor: Where the pipes are read.
        @param limits: The daemon's limits.
        """
        AdmittingFactory.__init__(self, limits)
        self.newSession = newSession
        self.reactor = reactor

    def buildAdmitted(self, closed: Callable[[], None]) -> StreamCaptureProtocol:
        """
        @return: A protocol for one dump.
        """
        return StreamCaptureProtocol(self.newSession, self.reactor, self.limits, closed)
