"""
Tests for L{imgrelay.cli.send}: which files a directory sends, the reader
that honours the link's pauses, and directories sent to a real cache over
TCP (and TLS) on 127.0.0.1 and fetched back byte for byte.
"""

from __future__ import annotations

import io
import os
import socket
import tempfile
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgrelay.config import CacheConfig
from imgrelay.cache.service import CacheService
from imgrelay.cli.progress import Progress
from imgrelay.cli.send import BLOCK, FileReader, SendError, linkEndpoint, listImages, send
from imgrelay.cli.fetch import Fetched, connect, receive
from imgrelay.core.interfaces import IOutgoingImage
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.transport.tls import TLSFiles
from imgrelay.testing import traces
from tests.e2e.test_e2e import CuttingRelay
from tests.transport.test_tls import Authority


def quiet() -> Progress:
    """
    Progress that goes nowhere.
    """
    return Progress(io.StringIO(), "send", bar=False)


class ListImagesTests(SynchronousTestCase):
    """
    L{listImages} takes every regular file of a directory, nothing else.
    """

    def test_regularFilesOnly(self) -> None:
        """
        Regular files are listed by name with their sizes; symbolic links,
        subdirectories, FIFOs and sockets are left out.
        """
        d = self.mktemp()
        os.makedirs(os.path.join(d, "sub"))
        for name, size in [("b.img", 3), ("a.img", 0)]:
            with open(os.path.join(d, name), "wb") as f:
                f.write(b"x" * size)
        os.symlink("/etc/passwd", os.path.join(d, "link.img"))
        os.mkfifo(os.path.join(d, "fifo"))
        s = socket.socket(socket.AF_UNIX)
        self.addCleanup(s.close)
        s.bind(os.path.join(d, "x.sock"))
        self.assertEqual(listImages(d), [("a.img", 0), ("b.img", 3)])

    def test_missing(self) -> None:
        """
        A directory that cannot be read is one clear error.
        """
        self.assertIn("cannot read", str(self.assertRaises(SendError, listImages, "/nonexistent/dir")))


@implementer(IOutgoingImage)
class FakeImage:
    """
    An outgoing image that records what it is given.
    """

    name = "pages.img"
    ring = None

    def __init__(self) -> None:
        self.data = b""
        self.closed = False
        #: A producer to pause after each write, as a full link does.
        self.full: Optional[FileReader] = None

    def attachProducer(self, producer: object) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.data += data
        if self.full is not None:
            self.full.pauseProducing()

    def close(self) -> None:
        self.closed = True


class FileReaderTests(SynchronousTestCase):
    """
    L{FileReader} reads one block per reactor turn, only while resumed.
    """

    def setUp(self) -> None:
        self.content = os.urandom(2 * BLOCK + 100)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(self.content)
        self.fd = os.open(path, os.O_RDONLY)
        self.clock = Clock()
        self.image = FakeImage()
        self.reader = FileReader(self.clock, self.fd, self.image, quiet())

    def test_interface(self) -> None:
        """
        It is a push producer.
        """
        self.assertTrue(verifyObject(IPushProducer, self.reader))
        self.reader.stopProducing()
        self.failureResultOf(self.reader.done, SendError)

    def test_blocksAndPauses(self) -> None:
        """
        Nothing is read until resumed; then a block at a time while the
        image's consumer (the link) keeps up: a pause, as a full link
        gives after a write, holds the next read until resumed. At the end
        the image is closed, the file too, and L{FileReader.done} fires
        with the size.
        """
        done: list[int] = []
        self.reader.done.addCallback(done.append)
        self.image.full = self.reader
        self.clock.advance(0)
        self.assertEqual(self.image.data, b"")
        self.reader.resumeProducing()
        self.clock.advance(0)
        self.assertEqual(len(self.image.data), BLOCK)
        self.clock.advance(0)
        self.assertEqual(len(self.image.data), BLOCK)
        self.reader.resumeProducing()
        self.reader.resumeProducing()
        self.clock.advance(0)
        self.assertEqual(len(self.image.data), 2 * BLOCK)
        self.image.full = None
        self.reader.resumeProducing()
        self.clock.advance(0)
        self.assertEqual((self.image.data, self.image.closed), (self.content, True))
        self.assertEqual(done, [len(self.content)])
        self.assertRaises(OSError, os.fstat, self.fd)

    def test_stop(self) -> None:
        """
        A stopped reader closes its file, reads no more, and fails
        L{FileReader.done}.
        """
        self.reader.resumeProducing()
        self.reader.stopProducing()
        self.clock.advance(0)
        self.assertEqual(self.image.data, b"")
        self.failureResultOf(self.reader.done, SendError)
        self.assertRaises(OSError, os.fstat, self.fd)


class SendTests(TestCase):
    """
    L{send} through a real cache on 127.0.0.1, fetched back with the fetch
    client.
    """

    timeout = 60

    async def startCache(self, tls: Optional[TLSFiles] = None) -> tuple[str, int]:
        self.base = tempfile.mkdtemp(prefix="imgrelay-send-")
        restore = os.path.join(self.base, "restore")
        os.mkdir(restore, 0o700)
        cache = CacheService(CacheConfig(listen="tcp:0:interface=127.0.0.1", imagesDir=restore, tls=tls), reactor)
        cache.startService()
        self.addCleanup(cache.stopService)
        address: Any = await cache.linkAddress()
        return restore, address.port

    def makeImages(self) -> tuple[str, dict[str, bytes]]:
        source = os.path.join(self.base, "source")
        os.mkdir(source)
        images = traces.traceImages()
        images["pages-big.img"] = traces.patternBytes("pages-big.img", 6 << 20)
        images["empty.img"] = b""
        for name, content in images.items():
            with open(os.path.join(source, name), "wb") as f:
                f.write(content)
        return source, images

    async def fetch(self, restore: str) -> tuple[str, Fetched]:
        out = os.path.join(self.base, "out")
        sock = connect(restore)
        self.addCleanup(sock.close)
        return out, await deferToThread(receive, sock, out, quiet())

    def assertSame(self, directory: str, images: dict[str, bytes]) -> None:
        self.assertEqual(sorted(os.listdir(directory)), sorted(images))
        for name, content in images.items():
            with open(os.path.join(directory, name), "rb") as f:
                self.assertEqual(f.read(), content, name)

    async def test_roundTrip(self) -> None:
        """
        A directory sent over TCP is confirmed by the cache, and a fetch
        writes it back byte for byte (6 MiB image included: more than the
        link holds before it pauses the reader).
        """
        restore, port = await self.startCache()
        source, images = self.makeImages()
        endpoint = linkEndpoint(reactor, f"tcp:host=127.0.0.1:port={port}")
        outcome = await send(reactor, source, endpoint, "sent", "", quiet())
        total = sum(map(len, images.values()))
        self.assertEqual((outcome.name, outcome.images, outcome.bytes), ("sent", len(images), total))
        out, fetched = await self.fetch(restore)
        self.assertEqual(fetched, Fetched("sent", len(images), total))
        self.assertSame(out, images)

    async def test_linkBreaks(self) -> None:
        """
        A send whose link is reset every 2 MiB dials again and resumes, as
        the proxy does, and the cache gets the directory byte for byte.
        """
        restore, port = await self.startCache()
        source, images = self.makeImages()
        relay = CuttingRelay(port, 2 << 20)
        self.addCleanup(relay.stop)
        endpoint = linkEndpoint(reactor, f"tcp:host=127.0.0.1:port={relay.port}")
        outcome = await send(reactor, source, endpoint, "cut", "", quiet())
        self.assertEqual(outcome.images, len(images))
        self.assertGreaterEqual(relay.cuts, 3)
        out, fetched = await self.fetch(restore)
        self.assertSame(out, images)

    async def test_snapshot(self) -> None:
        """
        With a snapshot id, the images come back in that snapshot's
        directory.
        """
        restore, port = await self.startCache()
        source, images = self.makeImages()
        endpoint = linkEndpoint(reactor, f"tcp:host=127.0.0.1:port={port}")
        await send(reactor, source, endpoint, "sent", "/mig/1", quiet())
        out, _ = await self.fetch(restore)
        self.assertEqual(os.listdir(out), ["%2Fmig%2F1"])
        self.assertSame(os.path.join(out, "%2Fmig%2F1"), images)

    async def test_tls(self) -> None:
        """
        Over a mutually authenticated TLS link the same holds.
        """
        base = tempfile.mkdtemp(prefix="imgrelay-send-tls-")
        ca = Authority(base, "ca")
        restore, port = await self.startCache(ca.issue("cache", ["127.0.0.1"]))
        source, images = self.makeImages()
        endpoint = linkEndpoint(reactor, f"tcp:host=127.0.0.1:port={port}", ca.issue("sender", ["sender"]))
        outcome = await send(reactor, source, endpoint, "tls", "", quiet())
        self.assertIsInstance(outcome, SessionOutcome)
        out, _ = await self.fetch(restore)
        self.assertSame(out, images)

    async def test_refused(self) -> None:
        """
        A session the cache refuses (the same name again, not yet
        restored) fails with the cache's reason.
        """
        restore, port = await self.startCache()
        source, _ = self.makeImages()
        endpoint = linkEndpoint(reactor, f"tcp:host=127.0.0.1:port={port}")
        await send(reactor, source, endpoint, "twice", "", quiet())
        try:
            await send(reactor, source, endpoint, "twice", "", quiet())
        except SendError as e:
            self.assertIn("cache refused the session: session 'twice' is already complete", str(e))
        else:
            self.fail("the second send succeeded")

    async def test_unreachable(self) -> None:
        """
        No cache listening: the send fails saying the cache cannot be
        reached.
        """
        _, port = await self.startCache()
        source, _ = self.makeImages()
        closed = reactor.listenTCP(0, Factory(), interface="127.0.0.1")  # type: ignore[attr-defined]
        number = closed.getHost().port
        await closed.stopListening()
        try:
            await send(reactor, source, TCP4ClientEndpoint(reactor, "127.0.0.1", number), "x", "", quiet(), 0.5)
        except SendError as e:
            self.assertIn("no link to the cache", str(e))
            self.assertIn("Connection was refused", str(e))
        else:
            self.fail("the send succeeded")


class LinkEndpointTests(SynchronousTestCase):
    """
    L{linkEndpoint} refuses what it cannot dial.
    """

    def test_bad(self) -> None:
        """
        A malformed endpoint, or TLS with no host name to check, is one
        clear error.
        """
        self.assertIn("not a valid client endpoint", str(self.assertRaises(SendError, linkEndpoint, reactor, "nope:x")))
        files = TLSFiles("/nonexistent/c", "/nonexistent/k", "/nonexistent/ca")
        self.assertIn("--tls-hostname", str(self.assertRaises(SendError, linkEndpoint, reactor, "unix:/x", files)))
        self.assertIn("cannot read", str(self.assertRaises(SendError, linkEndpoint, reactor, "tcp:h:1", files)))
