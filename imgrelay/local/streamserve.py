# -*- test-case-name: tests.scenarios.test_stream,tests.scenarios.test_fuzz -*-
"""
The cache's local side for CRIU's C{--stream} restore: CRIU connects to
C{DIR/streamer-serve.sock} and asks for images one by one; for each that
exists it passes the write end of a pipe, and the image is written into it
from memory while CRIU goes on asking.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Callable, Optional

from twisted.internet.interfaces import IFileDescriptorReceiver, IReactorFDSet
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.wire.criu import FD_BYTE, streamReply, streamServeFramer
from imgrelay.wire.framing import FramingError, HeaderReceived, PayloadChunk, PayloadDone
from imgrelay.core.limits import Limits
from imgrelay.local.admit import AdmittedProtocol, AdmittingFactory
from imgrelay.core.names import BadName, checkImageName
from imgrelay.transport.pipes import PipeWriter
from imgrelay.core.store import Image, Session
from imgrelay.core.slot import SessionSlot


@implementer(IFileDescriptorReceiver)
class StreamServeProtocol(AdmittedProtocol):
    """
    One C{criu restore --stream} connection.
    """

    log = Logger()

    def __init__(self, slot: SessionSlot, reactor: IReactorFDSet, limits: Limits, closed: Callable[[], None]) -> None:
        """
        @param slot: Where the session to restore is found.
        @param reactor: Where the pipes are written.
        @param limits: The daemon's limits (the longest request header,
            the longest image name).
        @param closed: Called once the connection closed.
        """
        self._slot = slot
        self._reactor = reactor
        self._limits = limits
        self._closed = closed
        self._framer = streamServeFramer(limits.maxHeaderSize)
        self._fds: deque[int] = deque()
        self._serving: Optional[Image] = None
        self._writers: set[PipeWriter] = set()
        self._gone = False
        self._detached = False
        self._parsing = False
        self._failed = False
        self.session: Optional[Session] = None
        self.served = 0

    def connectionMade(self) -> None:
        """
        Attach to the session this restore reads.
        """
        self.session = self._slot.attachRestore()
        self.log.info(
            "restore connected (session {session}, {state})",
            session=self.session.name, state=self.session.state.value,
        )

    def fileDescriptorReceived(self, descriptor: int) -> None:
        """
        A pipe arrived, for the image just answered.
        """
        if self._failed:
            os.close(descriptor)
        else:
            self._fds.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        """
        Parse requests and pipes.
        """
        if self._failed:
            return
        self._parsing = True
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._request(event.message.filename)
                elif isinstance(event, PayloadChunk):
                    if bytes(event.data) != FD_BYTE:
                        raise FramingError(f"expected the 0x00 byte of a passed pipe, got {bytes(event.data)!r}")
                elif isinstance(event, PayloadDone):
                    self._startWriting()
        except (FramingError, BadName) as e:
            self.log.error("restore connection: {reason}", reason=str(e))
            self._failed = True
            while self._fds:
                os.close(self._fds.popleft())
            self._transport().loseConnection()
        finally:
            self._parsing = False

    def _request(self, name: str) -> None:
        checkImageName(name, self._limits.maxNameLength)
        assert self.session is not None
        # Nothing more is read until this request is answered.
        self._producer().pauseProducing()
        self.session.waitImage("", name).addCallback(self._answer, name)

    def _answer(self, image: Optional[Image], name: str) -> None:
        if self._gone:
            return
        session = self.session
        assert session is not None
        if image is None and session.failure is not None:
            self.log.warn(
                "restore asked for {name}: answered 'does not exist' because session {session} failed: {reason}",
                name=name, session=session.name, reason=session.failure,
            )
        self._transport().write(streamReply(image is not None))
        self._serving = image
        self._framer.expectPayload(0 if image is None else 1)
        self._producer().resumeProducing()
        if not self._parsing:
            # Answered later: parse what arrived meanwhile.
            self.dataReceived(b"")

    def _startWriting(self) -> None:
        image, self._serving = self._serving, None
        assert image is not None
        if not self._fds:
            raise FramingError(f"reply for {image.name!r} was not followed by a pipe")
        fd = self._fds.popleft()
        writer = PipeWriter(fd, self._reactor, image.data.pieces, lambda err: self._written(image, writer, err))
        self._writers.add(writer)
        writer.startWriting()

    def _written(self, image: Image, writer: PipeWriter, error: Optional[Exception]) -> None:
        self._writers.discard(writer)
        if error is not None:
            self.log.error("restore: writing {name} failed: {error}", name=image.name, error=str(error))
        else:
            self.served += 1
        self._maybeDetach()

    def _maybeDetach(self) -> None:
        if self._gone and not self._writers and not self._detached and self.session is not None:
            self._detached = True
            self.log.info(
                "restore of session {session} ended, {served} images served",
                session=self.session.name, served=self.served,
            )
            self._slot.detachRestore(self.session)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        """
        CRIU closed the socket; pipes still being written go on.
        """
        self._closed()
        self._gone = True
        while self._fds:
            os.close(self._fds.popleft())
        self._maybeDetach()


class StreamServeFactory(AdmittingFactory[StreamServeProtocol]):
    """
    Serve C{streamer-serve.sock} from a L{SessionSlot}.
    """

    def __init__(self, slot: SessionSlot, reactor: IReactorFDSet, limits: Limits) -> None:
        """
        @param slot: Where the session to restore is found.
        @param reactor: Where the pipes are written.
        @param limits: The daemon's limits.
        """
        AdmittingFactory.__init__(self, limits)
        self.slot = slot
        self.reactor = reactor

    def buildAdmitted(self, closed: Callable[[], None]) -> StreamServeProtocol:
        """
        @return: A protocol for one restore.
        """
        return StreamServeProtocol(self.slot, self.reactor, self.limits, closed)
