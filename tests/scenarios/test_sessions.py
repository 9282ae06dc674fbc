"""
Integration tests of a cache serving many sessions at once
(C{sessionsRoot}): proxies and link clients over real TCP on 127.0.0.1,
restores over the real UNIX sockets in each session's directory, in one
process. The retention time is counted on a L{Clock}.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

import imgrelay
from imgrelay.wire.link import cacheMessageFramer
from imgrelay.wire.pb import link_pb2
from imgrelay.core.store import Session, SessionState
from imgrelay.testing import criu, traces
from tests.cache.helpers import chunk, done, hello, imageClose, imageOpen


class _LinkClient(Protocol):
    """
    A proxy at the link's level: sends the bytes it is given and collects
    the cache's answers.
    """

    def __init__(self) -> None:
        self._framer = cacheMessageFramer()
        self.received: list[link_pb2.CacheMessage] = []
        self._waiting: list[tuple[str, Deferred[link_pb2.CacheMessage]]] = []
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        for event in self._framer.feed(data):
            message = getattr(event, "message", None)
            if message is None:
                continue
            self.received.append(message)
            kind = message.WhichOneof("kind")
            for wanted, d in list(self._waiting):
                if wanted == kind:
                    self._waiting.remove((wanted, d))
                    d.callback(message)

    def answer(self, kind: str) -> Deferred[link_pb2.CacheMessage]:
        """
        @return: A Deferred firing with the first answer of that kind.
        """
        for message in self.received:
            if message.WhichOneof("kind") == kind:
                d: Deferred[link_pb2.CacheMessage] = Deferred()
                d.callback(message)
                return d
        d = Deferred()
        self._waiting.append((kind, d))
        return d

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)


async def waitUntil(condition: Callable[[], bool]) -> None:
    """
    Let the reactor run until C{condition} holds (a restore's end reaches
    the cache only after the client closed its socket).
    """
    while not condition():
        d: Deferred[None] = Deferred()
        reactor.callLater(0, d.callback, None)
        await d


def wholeSession(images: dict[str, bytes]) -> bytes:
    """
    @return: Every image opened, sent and closed, then the final handshake.
    """
    out = b""
    for i, (name, content) in enumerate(sorted(images.items()), 1):
        out += imageOpen(i, name) + chunk(i, content) + imageClose(i, content)
    return out + done([("", name, content) for name, content in sorted(images.items())])


class ManySessionsTests(TestCase):
    """
    A cache with a sessions root serves each session in its own directory,
    independently of the others.
    """

    timeout = 60

    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="imgrelay-sessions-")
        self.clock = Clock()
        self.released: list[Session] = []
        self._whenReleased: list[tuple[str, Deferred[Session]]] = []

    async def startCache(self, **kwargs: Any) -> imgrelay.CacheService:
        cache = imgrelay.CacheService(
            imgrelay.CacheConfig(listen="tcp:0:interface=127.0.0.1", sessionsRoot=self.root, **kwargs), reactor, self.clock
        )
        cache.addSessionObserver(self._released)
        cache.startService()
        self.addCleanup(cache.stopService)
        self.port = (await cache.linkAddress()).port  # type: ignore[attr-defined]
        return cache

    def _released(self, session: Session) -> None:
        self.released.append(session)
        for name, d in list(self._whenReleased):
            if name == session.name:
                self._whenReleased.remove((name, d))
                d.callback(session)

    def whenReleased(self, name: str) -> Deferred[Session]:
        """
        @return: A Deferred firing with session C{name} once released.
        """
        for session in self.released:
            if session.name == name:
                d: Deferred[Session] = Deferred()
                d.callback(session)
                return d
        d = Deferred()
        self._whenReleased.append((name, d))
        return d

    async def link(self, session: str, *then: bytes) -> _LinkClient:
        """
        Open a link, say hello for C{session}, wait for the answer, then
        send C{then}.
        """
        client = _LinkClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        assert client.transport is not None
        client.transport.write(hello(session))
        accepted = client.answer("accept")
        refused = client.answer("refuse")
        first: Deferred[Any] = Deferred()
        accepted.addCallback(first.callback)
        refused.addCallback(lambda m: None if first.called else first.callback(m))
        await first
        for data in then:
            client.transport.write(data)
        return client

    def sessionDir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def restore(self, name: str, images: list[str]) -> Deferred[dict[str, Optional[bytes]]]:
        """
        Restore C{images} of session C{name} through C{ROOT/NAME}, as
        C{criu restore --stream -D ROOT/NAME} would, in a thread.
        """
        path = os.path.join(self.sessionDir(name), "streamer-serve.sock")

        def run() -> dict[str, Optional[bytes]]:
            r = criu.StreamRestorer(path)
            try:
                return r.fetchAll(images)
            finally:
                r.close()

        return deferToThread(run)

    async def test_isolated(self) -> None:
        """
        Two proxies send two sessions into one cache at once; one's link is
        aborted in the middle of an image: that session fails and its
        directory goes, while the other, a real proxy, completes and is
        restored from its own directory byte for byte, then released.
        """
        # The broken link's session fails once no proxy resumed it.
        cache = await self.startCache(resumeTimeout=0.01)
        broken = await self.link("host-b-dump-00000000", imageOpen(1, "pages-1.img"), chunk(1, b"x" * 5000))
        self.assertTrue(os.path.exists(os.path.join(self.sessionDir("host-b-dump-00000000"), "streamer-serve.sock")))

        dump = tempfile.mkdtemp()
        proxy = imgrelay.ProxyService(imgrelay.ProxyConfig(imagesDir=dump, connect=f"tcp:host=127.0.0.1:port={self.port}"), reactor)
        outcomes: list[Any] = []
        outcome: Deferred[None] = Deferred()

        def over(result: Any) -> None:
            outcomes.append(result)
            outcome.callback(None)

        proxy.addSessionObserver(over)
        proxy.startService()
        self.addCleanup(proxy.stopService)
        name = proxy.sessionName
        images = {f"small-{i}.img": os.urandom(50 + i) for i in range(20)}
        images["pages-1.img"] = traces.patternBytes("pages-1.img", 3 << 20)

        def dumpAll() -> None:
            d = criu.StreamDumper(os.path.join(dump, "streamer-capture.sock"))
            for image, content in sorted(images.items()):
                d.send(image, content)
            d.finish()

        await deferToThread(dumpAll)
        await outcome
        self.assertIsInstance(outcomes[0], imgrelay.SessionOutcome)
        # The broken session is still receiving, untouched by the other.
        assert cache.registry is not None
        self.assertIs(cache.registry.slots["host-b-dump-00000000"].current.state, SessionState.RECEIVING)

        assert broken.transport is not None
        broken.transport.abortConnection()  # type: ignore[attr-defined]
        failed = await self.whenReleased("host-b-dump-00000000")
        self.assertIs(failed.state, SessionState.FAILED)
        assert cache.directories is not None
        await cache.directories.whenClosed("host-b-dump-00000000")
        self.assertFalse(os.path.exists(self.sessionDir("host-b-dump-00000000")))

        restored = await self.restore(name, sorted(images) + ["memfd.img"])
        self.assertIsNone(restored.pop("memfd.img"))
        self.assertEqual(restored, images)
        complete = await self.whenReleased(name)
        self.assertIs(complete.state, SessionState.COMPLETE)
        await cache.directories.whenClosed(name)
        self.assertEqual(os.listdir(self.root), [])

    async def test_checksumFailureIsolated(self) -> None:
        """
        A session whose image arrives corrupted fails, and the restore
        waiting for that image is told it does not exist; another session
        received at the same time completes and is restored.
        """
        cache = await self.startCache()
        good = {"inventory.img": b"inventory", "pages-1.img": os.urandom(70000)}
        other = await self.link("good")
        bad = await self.link("bad", imageOpen(1, "inventory.img"), chunk(1, b"abc"))
        waiting = self.restore("bad", ["inventory.img"])
        assert cache.registry is not None
        badSession = cache.registry.slots["bad"].current
        await waitUntil(lambda: badSession.waiting == 1)
        assert bad.transport is not None
        bad.transport.write(imageClose(1, b"abd"))
        refused = await bad.answer("image_refused")
        self.assertIn("checksum mismatch", refused.image_refused.reason)
        self.assertEqual(await waiting, {"inventory.img": None})
        assert other.transport is not None
        other.transport.write(wholeSession(good))
        await other.answer("done_ok")
        self.assertEqual(await self.restore("good", sorted(good)), good)
        self.assertIs((await self.whenReleased("bad")).state, SessionState.FAILED)
        self.assertIs((await self.whenReleased("good")).state, SessionState.COMPLETE)

    async def test_restoreTwiceWhileRetained(self) -> None:
        """
        With a retention time, a session can be restored twice, each time
        byte for byte; once the time has passed after the last restore, its
        directory and sockets are removed and its memory dropped.
        """
        cache = await self.startCache(retain=600)
        images = {"inventory.img": b"inventory", "pages-1.img": traces.patternBytes("p", 1 << 20)}
        client = await self.link("web-1", wholeSession(images))
        await client.answer("done_ok")
        self.assertEqual(await self.restore("web-1", sorted(images)), images)
        # The first restore's end started the retention time.
        await waitUntil(lambda: bool(self.clock.getDelayedCalls()))
        self.clock.advance(599)
        self.assertEqual(self.released, [])
        self.assertEqual(await self.restore("web-1", sorted(images)), images)
        await waitUntil(lambda: bool(self.clock.getDelayedCalls()))
        self.clock.advance(599)
        self.assertEqual(self.released, [])
        self.assertTrue(os.path.exists(os.path.join(self.sessionDir("web-1"), "streamer-serve.sock")))
        self.clock.advance(1)
        (session,) = self.released
        self.assertEqual(session.images, {})
        assert cache.directories is not None
        await cache.directories.whenClosed("web-1")
        self.assertFalse(os.path.exists(self.sessionDir("web-1")))

    async def test_remoteRestoreTwice(self) -> None:
        """
        With C{--protocol remote}, a session's C{img-cache.sock} is in its
        directory, and a retained session can be restored twice (each
        restore ending with FINISH).
        """
        await self.startCache(protocol="remote", retain=60)
        images = {"inventory.img": b"inventory", "pstree.img": b"tree"}
        client = await self.link("web-2", wholeSession(images))
        await client.answer("done_ok")
        path = os.path.join(self.sessionDir("web-2"), "img-cache.sock")

        def restore() -> dict[str, Optional[bytes]]:
            r = criu.RemoteClient(path)
            got = {name: r.read("", name) for name in sorted(images)}
            r.finish(criu.O_RDONLY)
            return got

        self.assertEqual(await deferToThread(restore), images)
        self.assertEqual(await deferToThread(restore), images)

    async def test_hostileNames(self) -> None:
        """
        Session names that are not a safe directory name are refused on the
        link with the reason, nothing is made under the root, and the
        cache goes on serving.
        """
        await self.startCache()
        for name in ["..", ".", ".hidden", "../escape", "a/b", "x" * 256]:
            client = await self.link(name)
            self.assertEqual([m.WhichOneof("kind") for m in client.received], ["refuse"], name)
            await client.closed
        self.assertEqual(os.listdir(self.root), [])
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(self.root), "escape")))
        client = await self.link("fine", wholeSession({"a.img": b"a"}))
        await client.answer("done_ok")

    async def test_sameNameInProgress(self) -> None:
        """
        A second link for a session in progress is refused; the first goes
        on and completes.
        """
        await self.startCache()
        first = await self.link("web-1")
        second = await self.link("web-1")
        (refusal,) = second.received
        self.assertIn("still in progress", refusal.refuse.reason)
        assert first.transport is not None
        first.transport.write(wholeSession({"a.img": b"a"}))
        await first.answer("done_ok")

    async def test_maxSessions(self) -> None:
        """
        With C{maxSessions} sessions in progress, the next link is refused
        naming the option; once one completes, a new one is taken.
        """
        await self.startCache(maxSessions=2)
        a = await self.link("a")
        await self.link("b")
        c = await self.link("c")
        (refusal,) = c.received
        self.assertIn("--max-sessions", refusal.refuse.reason)
        self.assertFalse(os.path.exists(self.sessionDir("c")))
        assert a.transport is not None
        a.transport.write(wholeSession({"a.img": b"a"}))
        await a.answer("done_ok")
        d = await self.link("d")
        self.assertEqual([m.WhichOneof("kind") for m in d.received], ["accept"])


class SingleDirectoryRetainTests(TestCase):
    """
    With one images directory, C{retain} keeps the single slot's session
    the same way.
    """

    timeout = 60

    async def test_restoreTwice(self) -> None:
        """
        A session restored from the images directory can be restored again
        until the retention time has passed after the last restore; then it
        is released and a restore would wait for the next session.
        """
        restoreDir = tempfile.mkdtemp()
        clock = Clock()
        released: list[Session] = []
        cache = imgrelay.CacheService(
            imgrelay.CacheConfig(imagesDir=restoreDir, listen="tcp:0:interface=127.0.0.1", retain=30), reactor, clock
        )
        cache.addSessionObserver(released.append)
        cache.startService()
        self.addCleanup(cache.stopService)
        port = (await cache.linkAddress()).port  # type: ignore[attr-defined]
        client = _LinkClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        assert client.transport is not None
        images = {"inventory.img": b"inventory", "pages-1.img": os.urandom(100000)}
        client.transport.write(hello("mig") + wholeSession(images))
        await client.answer("done_ok")
        path = os.path.join(restoreDir, "streamer-serve.sock")

        def restore() -> dict[str, Optional[bytes]]:
            r = criu.StreamRestorer(path)
            try:
                return r.fetchAll(sorted(images))
            finally:
                r.close()

        assert cache.slot is not None
        session = cache.slot.current
        for _ in range(2):
            self.assertEqual(await deferToThread(restore), images)
            await waitUntil(lambda: session.restores == 0)
            clock.advance(29)
            self.assertEqual(released, [])
        clock.advance(1)
        self.assertEqual(released, [session])
        self.assertIsNot(cache.slot.current, session)
