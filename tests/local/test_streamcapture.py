"""
Unit tests for L{imgrelay.local.streamcapture}, with a fake session and one
real pipe (the dump's scenarios are in L{tests.scenarios.test_stream} and
L{tests.scenarios.test_fuzz}).
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.internet import main
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from imgrelay.core.interfaces import IImageSink, IReadBuffers
from imgrelay.core.limits import Limits
from imgrelay.local.streamcapture import StreamCaptureProtocol
from imgrelay.wire.criu import FD_BYTE, frame
from imgrelay.wire.pb import criu_pb2
from tests.local.test_remote import FakeImage, RecordingBuffers


@implementer(IImageSink)
class _Sink:
    """
    A session whose images read into C{ring}.
    """

    paused = False

    def __init__(self, ring: Optional[IReadBuffers]) -> None:
        self.ready: Deferred[None] = succeed(None)
        self.result: Deferred[None] = Deferred()
        self.ring = ring
        self.images: list[FakeImage] = []

    def openImage(self, snapshotId: str, name: str, mode: int = 0) -> FakeImage:
        image = FakeImage(name)
        image.ring = self.ring
        self.images.append(image)
        return image

    def pushSnapshot(self, snapshotId: str) -> None:
        pass

    def finish(self) -> None:
        self.finished = True

    def abort(self, reason: str) -> None:
        self.aborted = reason

    finished = False
    aborted: Optional[str] = None


class StreamCaptureProtocolTests(SynchronousTestCase):
    """
    L{StreamCaptureProtocol} reads each passed pipe into its image.
    """

    def test_pipeReadIntoRing(self) -> None:
        """
        An image's pipe is read into the buffers of the image's C{ring}.
        """
        buffers = RecordingBuffers()
        sink = _Sink(buffers)
        protocol = StreamCaptureProtocol(lambda: sink, MemoryReactorClock(), Limits(), lambda: None)
        protocol.makeConnection(StringTransport())
        r, w = os.pipe()
        os.write(w, b"content")
        os.close(w)
        protocol.fileDescriptorReceived(r)
        protocol.dataReceived(frame(criu_pb2.StreamRequest(filename="pages-1.img")) + FD_BYTE)
        (image,) = sink.images
        image.producer.doRead()
        self.assertEqual([kind for kind, _ in buffers.calls], ["take", "handedOn"])
        self.assertEqual(image.data, b"content")
        image.producer.connectionLost(Failure(main.CONNECTION_DONE))
        self.assertTrue(image.closed)


class InventoryTests(SynchronousTestCase):
    """
    A dump stream is complete only with CRIU's C{inventory.img}, which a
    dump writes last and only when it succeeded.
    """

    def dump(self, names: list[str]) -> tuple[_Sink, StreamCaptureProtocol]:
        """
        @return: The session and the protocol of a dump connection that
            sent an empty image for each of C{names}, then closed.
        """
        sink = _Sink(None)
        protocol = StreamCaptureProtocol(lambda: sink, MemoryReactorClock(), Limits(), lambda: None)
        protocol.makeConnection(StringTransport())
        for name in names:
            r, w = os.pipe()
            os.close(w)
            protocol.fileDescriptorReceived(r)
            protocol.dataReceived(frame(criu_pb2.StreamRequest(filename=name)) + FD_BYTE)
        protocol.connectionLost(Failure(main.CONNECTION_DONE))
        if sink.aborted is None:
            # The pipes are the readers' to close: a failed dump closed them.
            for image in sink.images:
                self.addCleanup(image.producer.abort)
        return sink, protocol

    def test_withInventory(self) -> None:
        """
        A dump that wrote C{inventory.img} finishes its session.
        """
        sink, _ = self.dump(["pages-1.img", "inventory.img"])
        self.assertEqual((sink.finished, sink.aborted), (True, None))

    def test_withoutInventory(self) -> None:
        """
        A dump connection that closes without C{inventory.img} (CRIU's dump
        failed) gives the session up, saying why, and logs an error.
        """
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import LogLevel, globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        sink, _ = self.dump(["pages-1.img", "core-1.img"])
        self.assertFalse(sink.finished)
        assert sink.aborted is not None
        self.assertIn("without inventory.img", sink.aborted)
        self.assertIn("the dump failed", sink.aborted)
        errors = [e for e in events if e["log_level"] is LogLevel.error]
        self.assertEqual(len(errors), 1)

    def test_emptyDump(self) -> None:
        """
        A dump connection that sends nothing at all is a failed dump too.
        """
        sink, _ = self.dump([])
        self.assertFalse(sink.finished)
        self.assertIsNotNone(sink.aborted)
