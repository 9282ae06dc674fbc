"""
Unit tests for L{imgrelay.local.remote}: CRIU's remote protocol on one local
connection, with the spec's vectors, a fake backend and no real I/O.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet import main
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgrelay.core.errors import SessionError
from imgrelay.core.imagedata import ImageData
from imgrelay.core.interfaces import IOutgoingImage, IReadBuffers
from imgrelay.core.limits import Limits
from imgrelay.proxy.session import ProxySession
from imgrelay.local.interfaces import IRemoteBackend
from imgrelay.local.remote import RemoteProtocol
from imgrelay.cache.remote import CacheRemoteBackend
from imgrelay.proxy.remote import ProxyRemoteBackend
from imgrelay.core.store import Image
from imgrelay.core.slot import SessionSlot
from imgrelay.wire.criu import FD_BYTE

# The vectors of ../shared/spec/criu-wire.md section 2.
WRITE_HEADER = bytes.fromhex("18000000 0a0b70616765732d312e696d67 12072f6d69672f6431 1801".replace(" ", ""))
READ_HEADER = bytes.fromhex("18000000 0a0b70616765732d312e696d67 12072f6d69672f6431 1800".replace(" ", ""))
FINISH_DUMP = bytes.fromhex("060000000a0012001801")
FINISH_RESTORE = bytes.fromhex("060000000a0012001800")
PARENT_APPEND = bytes.fromhex("0d0000000a06706172656e74120018800" "8")
PARENT_READ = bytes.fromhex("0c0000000a06706172656e741200" "1800")
RECORD_D1 = bytes.fromhex("090000000a072f6d69672f6431")
REPLY_OK = bytes.fromhex("020000000800")
REPLY_ENOENT = bytes.fromhex("020000000802")


@implementer(IReadBuffers)
class RecordingBuffers:
    """
    Read buffers that record what a pipe reader does with them.
    """

    copyBelow = 0

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytearray]] = []

    def take(self) -> bytearray:
        buffer = bytearray(64)
        self.calls.append(("take", buffer))
        return buffer

    def giveBack(self, buffer: bytearray) -> None:
        self.calls.append(("giveBack", buffer))

    def handedOn(self, buffer: bytearray) -> None:
        self.calls.append(("handedOn", buffer))


@implementer(IOutgoingImage)
class FakeImage:
    ring: Optional[IReadBuffers] = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = b""
        self.closed = False
        self.producer: Any = None

    def attachProducer(self, producer: object) -> None:
        self.producer = producer

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True


@implementer(IRemoteBackend)
class FakeBackend:
    """
    Records what the protocol asks of it.
    """

    def __init__(self) -> None:
        self.ready: Deferred[None] = succeed(None)
        self.calls: list[tuple[Any, ...]] = []
        self.images: dict[tuple[str, str], Image] = {}
        self.opened: list[FakeImage] = []
        self.pending: Optional[Deferred[Optional[Image]]] = None
        self.ring: Optional[IReadBuffers] = None

    def openImage(self, snapshotId: str, name: str, append: bool) -> Deferred[IOutgoingImage]:
        self.calls.append(("open", snapshotId, name, append))
        image = FakeImage(name)
        image.ring = self.ring
        self.opened.append(image)
        return succeed(image)

    def readImage(self, snapshotId: str, name: str) -> Deferred[Optional[Image]]:
        self.calls.append(("read", snapshotId, name))
        if self.pending is not None:
            return self.pending
        return succeed(self.images.get((snapshotId, name)))

    def pushSnapshot(self, snapshotId: str) -> None:
        self.calls.append(("push", snapshotId))

    def snapshots(self) -> Deferred[Optional[list[str]]]:
        return succeed(["/mig/d1", "/mig/d2"])

    def finish(self, openMode: int) -> None:
        self.calls.append(("finish", openMode))

    def abort(self, reason: str) -> None:
        self.calls.append(("abort", reason))

    def connectionOpened(self) -> None:
        pass

    def headerDone(self) -> None:
        pass


def image(snapshotId: str, name: str, content: bytes) -> Image:
    data = ImageData()
    data.append(content)
    data.close()
    return Image(snapshotId, name, data, 0)


class RemoteProtocolTests(SynchronousTestCase):
    """
    L{RemoteProtocol} handles every kind of connection of the spec.
    """

    def setUp(self) -> None:
        self.backend = FakeBackend()
        self.reactor = MemoryReactorClock()

    def connect(self) -> tuple[RemoteProtocol, StringTransport]:
        protocol = RemoteProtocol(self.backend, self.reactor, Limits(), lambda: None, idleTimeout=30)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def feed(self, data: bytes, byteByByte: bool = False) -> tuple[RemoteProtocol, StringTransport]:
        protocol, transport = self.connect()
        pieces = [data[i : i + 1] for i in range(len(data))] if byteByByte else [data]
        for piece in pieces:
            protocol.dataReceived(piece)
        return protocol, transport

    def test_backendInterfaces(self) -> None:
        """
        Both sides' backends provide L{IRemoteBackend}.
        """
        verifyObject(IRemoteBackend, CacheRemoteBackend(SessionSlot()))
        verifyObject(IRemoteBackend, ProxyRemoteBackend(lambda: ProxySession("s")))

    def test_versionRing(self) -> None:
        """
        An image version opened on the proxy provides L{IOutgoingImage},
        and its C{ring} is that of its session's link at the time it is
        read.
        """
        from tests.proxy.test_session import FakeLink

        link = FakeLink()
        session = ProxySession("s")
        session.accepted(link)
        version = self.successResultOf(ProxyRemoteBackend(lambda: session).openImage("/mig/d1", "pages-1.img", False))
        self.assertTrue(verifyObject(IOutgoingImage, version))
        self.assertIsNone(version.ring)
        link.ring = RecordingBuffers()  # type: ignore[attr-defined]
        self.assertIs(version.ring, link.ring)  # type: ignore[attr-defined]

    def test_finishVectors(self) -> None:
        """
        The dump's and the restore's FINISH (spec vectors) reach the backend
        with their open mode; the connection closes with no reply.
        """
        for vector, mode in [(FINISH_DUMP, 1), (FINISH_RESTORE, 0)]:
            for byteByByte in (False, True):
                self.backend.calls.clear()
                _, transport = self.feed(vector, byteByByte)
                self.assertEqual(self.backend.calls, [("finish", mode)])
                self.assertEqual(transport.value(), b"")
                self.assertTrue(transport.disconnecting)

    def test_writeOnSocket(self) -> None:
        """
        A write with an empty snapshot id carries its content on the socket
        until it closes.
        """
        header = WRITE_HEADER.replace(b"\x12\x07/mig/d1", b"\x12\x00").replace(b"\x18\x00\x00\x00", b"\x11\x00\x00\x00")
        protocol, transport = self.feed(header + b"content on ", byteByByte=True)
        protocol.dataReceived(b"the socket")
        self.assertEqual(self.backend.calls, [("open", "", "pages-1.img", False)])
        (opened,) = self.backend.opened
        self.assertFalse(opened.closed)
        protocol.connectionLost()
        self.assertEqual((opened.data, opened.closed), (b"content on the socket", True))

    def test_pipeReadIntoRing(self) -> None:
        """
        A write's pipe is read into the buffers of the image's C{ring}.
        """
        self.backend.ring = buffers = RecordingBuffers()
        r, w = os.pipe()
        os.write(w, b"content")
        os.close(w)
        protocol, transport = self.connect()
        protocol.fileDescriptorReceived(r)
        protocol.dataReceived(WRITE_HEADER + FD_BYTE)
        (opened,) = self.backend.opened
        reader = opened.producer
        reader.doRead()
        self.assertEqual([kind for kind, _ in buffers.calls], ["take", "handedOn"])
        self.assertEqual(opened.data, b"content")
        reader.connectionLost(Failure(main.CONNECTION_DONE))
        self.assertTrue(opened.closed)

    def test_parentAppendVector(self) -> None:
        """
        The "parent" append vector followed by snapshot id records pushes
        each id, in order.
        """
        record2 = RECORD_D1.replace(b"d1", b"d2")
        _, transport = self.feed(PARENT_APPEND + RECORD_D1 + record2, byteByByte=True)
        self.assertEqual(self.backend.calls, [("push", "/mig/d1"), ("push", "/mig/d2")])

    def test_parentReadVector(self) -> None:
        """
        The "parent" read vector is answered with the ok reply and every
        snapshot id record, then the connection closes.
        """
        _, transport = self.feed(PARENT_READ)
        self.assertEqual(transport.value(), REPLY_OK + RECORD_D1 + RECORD_D1.replace(b"d1", b"d2"))
        self.assertTrue(transport.disconnecting)

    def test_readUnknownVector(self) -> None:
        """
        A read (spec vector) of an image the backend does not have gets the
        ENOENT reply vector and a closed connection.
        """
        for byteByByte in (False, True):
            _, transport = self.feed(READ_HEADER, byteByByte)
            self.assertEqual(transport.value(), REPLY_ENOENT)
            self.assertTrue(transport.disconnecting)

    def test_readOnSocket(self) -> None:
        """
        A read with an empty snapshot id gets the ok reply then the content
        on the socket, then EOF.
        """
        self.backend.images[("", "pages-1.img")] = image("", "pages-1.img", b"the content")
        header = READ_HEADER.replace(b"\x12\x07/mig/d1", b"\x12\x00").replace(b"\x18\x00\x00\x00", b"\x11\x00\x00\x00")
        _, transport = self.feed(header)
        self.assertEqual(transport.value(), REPLY_OK + b"the content")
        self.assertTrue(transport.disconnecting)

    def test_readWaits(self) -> None:
        """
        A read the backend answers later is answered then, and nothing the
        client sends meanwhile is parsed before.
        """
        self.backend.pending = Deferred()
        protocol, transport = self.feed(READ_HEADER)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        self.backend.pending.callback(None)
        self.assertEqual(transport.value(), REPLY_ENOENT)

    def test_writeRefused(self) -> None:
        """
        A write the backend refuses (the restore side takes none) closes the
        connection with a logged error.
        """
        self.backend.openImage = lambda *a: fail(SessionError("no writes here"))  # type: ignore[method-assign]
        _, transport = self.feed(WRITE_HEADER)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_hostileNames(self) -> None:
        """
        Image names that are not file names close the connection before the
        backend sees them.
        """
        for name in [b"../x", b"..", b"a/b"]:
            header = WRITE_HEADER.replace(b"\x0a\x0bpages-1.img", bytes([0x0A, len(name)]) + name)
            header = bytes([len(header) - 4]) + header[1:]
            self.backend.calls.clear()
            _, transport = self.feed(header)
            self.assertEqual(self.backend.calls, [])
            self.assertTrue(transport.disconnecting)

    def test_idleTimeout(self) -> None:
        """
        A client that sends half a header and stops is disconnected after
        the idle timeout; one that completes its header is not.
        """
        slow, slowTransport = self.feed(WRITE_HEADER[:7])
        done, doneTransport = self.feed(FINISH_DUMP)
        self.reactor.advance(29)
        self.assertFalse(slowTransport.disconnecting)
        self.reactor.advance(2)
        self.assertTrue(slowTransport.disconnecting)

    def test_slowClientDoesNotStallOthers(self) -> None:
        """
        While one client has sent only part of its header, others are
        served.
        """
        self.feed(WRITE_HEADER[:5])
        _, transport = self.feed(READ_HEADER)
        self.assertEqual(transport.value(), REPLY_ENOENT)


class FinishOrderTests(SynchronousTestCase):
    """
    On the proxy, a dump's FINISH never overtakes a write whose connection
    was accepted before it.
    """

    def test_finishWaitsForPendingHeader(self) -> None:
        """
        FINISH read before the header of a connection already accepted
        completes the session only once that header came: the image it
        writes is in the final handshake.
        """
        from tests.proxy.test_session import FakeLink

        link = FakeLink()
        session = ProxySession("s", keepImages=True)
        session.accepted(link)
        backend = ProxyRemoteBackend(lambda: session)
        reactor = MemoryReactorClock()

        def connect() -> tuple[RemoteProtocol, StringTransport]:
            protocol = RemoteProtocol(backend, reactor, Limits(), lambda: None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            return protocol, transport

        def writeOnSocket(name: bytes) -> bytes:
            header = WRITE_HEADER.replace(b"\x0a\x0bpages-1.img", bytes([0x0A, len(name)]) + name)
            header = header.replace(b"\x12\x07/mig/d1", b"\x12\x00")
            return bytes([len(header) - 4]) + header[1:]

        late, _ = connect()
        tree, _ = connect()
        tree.dataReceived(writeOnSocket(b"pstree.img") + b"tree")
        tree.connectionLost()
        finish, _ = connect()
        finish.dataReceived(FINISH_DUMP)
        self.assertNotIn("done", link.kinds())
        late.dataReceived(writeOnSocket(b"late.img") + b"late")
        late.connectionLost()
        self.assertEqual(link.kinds()[-1], "done")
        self.assertEqual(link.calls[-1][1], 2)
