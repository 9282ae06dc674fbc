"""
Tests for L{imgrelay.cache.fetchserve}: the cache's fetch service, first over a
L{StringTransport}, then through a real cache and proxy fed by the
CRIU-like dumper, fetched over the real UNIX socket.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from typing import Any, Optional

from crc32c import crc32c
from twisted.internet import reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from imgrelay.config import CacheConfig, ProxyConfig
from imgrelay.transport.localsock import CAPTURE_SOCKET
from imgrelay.transport.localsock import FETCH_SOCKET
from imgrelay.wire import fetch as _fetchwire
from imgrelay.cache.service import CacheService
from imgrelay.cli.progress import Progress
from imgrelay.cli.fetch import Fetched, connect, receive
from imgrelay.cache.fetchserve import PIECE, FetchServeFactory, FetchServeProtocol, ImageFeed, sessionStream
from imgrelay.wire.framing import HeaderReceived, PayloadChunk
from imgrelay.core.imagedata import ImageData
from imgrelay.core.integrity import ManifestEntry, manifestDigest
from imgrelay.core.limits import Limits
from imgrelay.transport.localsock import localEndpoint
from imgrelay.proxy.service import ProxyService
from imgrelay.transport.senders import SocketSender
from imgrelay.core.store import Image, Session
from imgrelay.core.slot import SessionSlot
from imgrelay.testing import traces


def addImage(session: Session, snapshotId: str, name: str, content: bytes) -> None:
    """
    Put a verified image into C{session}.
    """
    data = ImageData()
    data.append(content)
    data.close()
    session.addVerified(Image(snapshotId, name, data, crc32c(content)))


def parse(data: bytes) -> list[tuple[str, Any]]:
    """
    What a fetch client would see: each message's kind and fields, with
    each image's bytes joined.
    """
    out: list[tuple[str, Any]] = []
    for event in _fetchwire.fetchMessageFramer().feed(data):
        if isinstance(event, HeaderReceived):
            m = event.message
            kind = m.WhichOneof("kind")
            if kind == "image":
                out.append(("image", (m.image.snapshot_id, m.image.name, m.image.size, m.image.crc32c, b"")))
            else:
                out.append((kind, getattr(m, kind)))
        elif isinstance(event, PayloadChunk):
            kind, (snap, name, size, crc, content) = out[-1]
            out[-1] = (kind, (snap, name, size, crc, content + bytes(event.data)))
    return out


class Fixture:
    """
    A slot, a fetch protocol on a L{StringTransport}, and what was released.
    """

    def __init__(self, limits: Limits = Limits()) -> None:
        self.released: list[Session] = []
        self.slot = SessionSlot(self.released.append)
        self.factory = FetchServeFactory(self.slot, reactor, limits)
        self.transport = StringTransport()

    def connect(self) -> FetchServeProtocol:
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(self.transport)
        return protocol


class FetchServeTests(SynchronousTestCase):
    """
    L{FetchServeProtocol} answers with a final session's images or its
    failure, as a reader of the session.
    """

    def test_completeSession(self) -> None:
        """
        A fetch of a complete session gets Begin, each image (sorted by
        snapshot id and name) with its size, CRC-32C and bytes, and End
        with the count, bytes and manifest digest; then the connection
        closes and the session, read, is released.
        """
        f = Fixture()
        session = f.slot.claim("s1")
        addImage(session, "", "b.img", b"bbb")
        addImage(session, "", "a.img", b"a" * 10)
        addImage(session, "snap", "a.img", b"")
        session.complete()
        protocol = f.connect()
        self.assertTrue(f.transport.disconnecting)
        # Closing is not held back by a producer the transport could resume.
        self.assertIsNone(f.transport.producer)
        messages = parse(f.transport.value())
        self.assertEqual([k for k, _ in messages], ["begin", "image", "image", "image", "end"])
        begin = messages[0][1]
        self.assertEqual((begin.version, begin.session, begin.images, begin.bytes), (1, "s1", 3, 13))
        self.assertEqual(
            [m for _, m in messages[1:4]],
            [("", "a.img", 10, crc32c(b"a" * 10), b"a" * 10), ("", "b.img", 3, crc32c(b"bbb"), b"bbb"),
             ("snap", "a.img", 0, 0, b"")],
        )
        end = messages[4][1]
        digest = manifestDigest(
            [ManifestEntry("", "a.img", 10, crc32c(b"a" * 10)), ManifestEntry("", "b.img", 3, crc32c(b"bbb")),
             ManifestEntry("snap", "a.img", 0, 0)]
        )
        self.assertEqual((end.images, end.bytes, end.manifest_sha256), (3, 13, digest))
        self.assertEqual(session.restores, 1)
        self.assertEqual(f.released, [])
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(session.restores, 0)
        self.assertEqual(f.released, [session])
        self.assertIsNot(f.slot.current, session)

    def test_waitsForTheEnd(self) -> None:
        """
        A fetch that connects before the session is final gets nothing
        until it completes, even once images are verified.
        """
        f = Fixture()
        f.connect()
        session = f.slot.claim("s1")
        addImage(session, "", "a.img", b"xyz")
        self.assertEqual(f.transport.value(), b"")
        session.complete()
        self.assertEqual([k for k, _ in parse(f.transport.value())], ["begin", "image", "end"])

    def test_failedSession(self) -> None:
        """
        A fetch of a failed session is told why, in one Error, and the
        connection closes; the failed session is kept until it leaves.
        """
        f = Fixture()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol = f.connect()
        session = f.slot.claim("s1")
        session.fail("checksum mismatch on a.img")
        messages = parse(f.transport.value())
        self.assertEqual(len(messages), 1)
        self.assertEqual(messages[0][0], "error")
        self.assertIn("checksum mismatch on a.img", messages[0][1].reason)
        self.assertTrue(f.transport.disconnecting)
        self.assertEqual(f.released, [])
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(f.released, [session])
        self.assertTrue(any("failed" in e["log_format"] for e in logged))

    def test_leavesEarly(self) -> None:
        """
        A fetch that disconnects while the session is still being received
        detaches from it: the session is not released, and sends nothing
        once it completes.
        """
        f = Fixture()
        protocol = f.connect()
        session = f.slot.claim("s1")
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(session.restores, 0)
        session.complete()
        self.assertEqual(f.transport.value(), b"")
        self.assertEqual(f.released, [])

    def test_clientSpeaks(self) -> None:
        """
        A client that sends anything is cut off, with a log line; the
        session is left alone.
        """
        f = Fixture()
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        protocol = f.connect()
        protocol.dataReceived(b"hello")
        self.assertTrue(f.transport.disconnected)
        self.assertTrue(any("must send nothing" in e["log_format"] for e in logged))
        protocol.connectionLost(Failure(Exception("aborted")))
        self.assertEqual(f.slot.current.restores, 0)

    def test_connectionLimit(self) -> None:
        """
        Beyond the factory's connection limit a fetch is refused.
        """
        f = Fixture(Limits(maxLocalConnections=1))
        f.connect()
        self.assertIsNone(f.factory.buildProtocol(None))


class SessionStreamTests(SynchronousTestCase):
    """
    L{sessionStream} sends image bytes as views of the image's blocks.
    """

    def test_viewsOfBlocks(self) -> None:
        """
        A 3.5 MiB image goes out as memoryviews of at most L{PIECE} bytes
        over the image's own memory, together its exact content.
        """
        slot = SessionSlot()
        session = slot.claim("s")
        content = os.urandom(3 * PIECE + PIECE // 2)
        addImage(session, "", "pages.img", content)
        session.complete()
        pieces = list(sessionStream(session))
        views = [p for p in pieces if isinstance(p, memoryview)]
        self.assertEqual(b"".join(bytes(v) for v in views), content)
        self.assertTrue(all(len(v) <= PIECE for v in views))
        blocks = {id(b.obj) for b in session.images[("", "pages.img")].data.pieces}
        self.assertTrue(all(id(v.obj) in blocks for v in views))


class ImageFeedTests(SynchronousTestCase):
    """
    L{ImageFeed} is a push producer that honours pauses.
    """

    def test_interface(self) -> None:
        """
        It provides L{IPushProducer}.
        """
        self.assertTrue(verifyObject(IPushProducer, ImageFeed(iter([]), lambda p: None, lambda: None)))

    def test_pauses(self) -> None:
        """
        A sender that pauses the feed after each piece gets one piece per
        resume; the feed says it is done only after the last.
        """
        sent: list[Any] = []
        done: list[bool] = []
        feed: Optional[ImageFeed] = None

        def send(pieces: Any) -> None:
            sent.extend(pieces)
            assert feed is not None
            feed.pauseProducing()

        feed = ImageFeed(iter([b"1", b"2", b"3"]), send, lambda: done.append(True))
        feed.resumeProducing()
        self.assertEqual((sent, done), ([b"1"], []))
        feed.resumeProducing()
        feed.resumeProducing()
        self.assertEqual((sent, done), ([b"1", b"2", b"3"], []))
        feed.resumeProducing()
        self.assertEqual(done, [True])

    def test_stopped(self) -> None:
        """
        A stopped feed sends nothing more.
        """
        sent: list[Any] = []
        feed = ImageFeed(iter([b"1", b"2"]), sent.extend, lambda: None)
        feed.stopProducing()
        feed.resumeProducing()
        self.assertEqual(sent, [])


class FetchIntegrationTests(TestCase):
    """
    A real cache with its fetch socket, fed by a real proxy replaying the
    recorded CRIU dump; the fetch client reads the UNIX socket in a thread.
    """

    timeout = 120

    async def test_roundTrip(self) -> None:
        """
        A fetch started before the dump waits for the session, then writes
        every image byte for byte (among them one of 9 MiB, more than the
        sender holds before it pauses) and reports the session's totals.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-fetch-")
        dumpDir, restoreDir, outDir = (os.path.join(base, d) for d in ("dump", "restore", "out"))
        os.mkdir(dumpDir, 0o700)
        os.mkdir(restoreDir, 0o700)
        cache = CacheService(CacheConfig(listen="tcp:0:interface=127.0.0.1", imagesDir=restoreDir), reactor)
        cache.startService()
        self.addCleanup(cache.stopService)
        address = await cache.linkAddress()
        proxy = ProxyService(
            ProxyConfig(
                imagesDir=dumpDir, connect=f"tcp:host=127.0.0.1:port={address.port}", sessionName="trace"  # type: ignore[attr-defined]
            ),
            reactor,
        )
        proxy.startService()
        self.addCleanup(proxy.stopService)
        images = traces.traceImages()
        images["pages-big.img"] = traces.patternBytes("pages-big.img", 9 << 20)
        events = traces.loadTrace("dump-stream.json")["events"]
        # The big image opens early and closes late, as CRIU's pages do.
        events = events[:3] + [{"op": "open", "name": "pages-big.img"}] + events[3:-1] + [
            {"op": "close", "name": "pages-big.img"}, events[-1]]
        sock = connect(restoreDir)
        self.addCleanup(sock.close)
        progress = Progress(io.StringIO(), "fetch", bar=False)
        protocols: list[FetchServeProtocol] = []
        build = FetchServeFactory.buildProtocol

        def recording(factory: FetchServeFactory, addr: object) -> FetchServeProtocol:
            protocols.append(build(factory, addr))
            return protocols[-1]

        self.patch(FetchServeFactory, "buildProtocol", recording)
        fetching = deferToThread(receive, sock, outDir, progress)
        await deferToThread(traces.replayDump, os.path.join(dumpDir, CAPTURE_SOCKET), images, events)
        fetched = await fetching
        # The bytes went out straight from the images' blocks.
        self.assertIsInstance(protocols[0]._sender, SocketSender)
        self.assertEqual(fetched, Fetched("trace", len(images), sum(map(len, images.values()))))
        self.assertEqual(sorted(os.listdir(outDir)), sorted(images))
        for name, content in images.items():
            with open(os.path.join(outDir, name), "rb") as f:
                self.assertEqual(f.read(), content, name)


class CacheWiringTests(TestCase):
    """
    L{imgrelay.cacheService} serves the fetch socket beside CRIU's.
    """

    def test_socketInImagesDir(self) -> None:
        """
        The fetch socket is made in the images directory with the
        configured mode and a lock file, and it answers.
        """
        d = tempfile.mkdtemp()
        cache = CacheService(CacheConfig(imagesDir=d, listen="tcp:0:interface=127.0.0.1", socketMode=0o660), reactor)
        cache.startService()
        self.addCleanup(cache.stopService)
        path = os.path.join(d, FETCH_SOCKET)
        self.assertTrue(stat.S_ISSOCK(os.lstat(path).st_mode))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o660)
        self.assertTrue(os.path.lexists(path + ".lock"))
        connect(d).close()

    def test_notWithLocal(self) -> None:
        """
        With CRIU's socket elsewhere (C{local}), no fetch socket is made
        unless one is asked for.
        """
        d = tempfile.mkdtemp()
        cache = CacheService(
            CacheConfig(imagesDir=d, listen="tcp:0:interface=127.0.0.1", local=localEndpoint(d, "criu.sock")), reactor
        )
        cache.startService()
        self.addCleanup(cache.stopService)
        self.assertEqual(sorted(os.listdir(d)), ["criu.sock", "criu.sock.lock"])
