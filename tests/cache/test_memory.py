"""
Tests for L{imgrelay.cache.memory}: the cache's memory bound.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

import imgrelay
from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.core.limits import parseSize
from imgrelay.cache.memory import IBoundReader, MemoryBound
from imgrelay.core.store import Session, SessionState
from imgrelay.testing import criu, traces


@implementer(IBoundReader)
class FakeReader:
    """
    A link carrying C{session} that records what the bound did to it.
    """

    def __init__(self, session: Optional[Session]) -> None:
        self.session = session
        self.calls: list[str] = []

    def pauseReading(self) -> None:
        self.calls.append("pause")

    def resumeReading(self) -> None:
        self.calls.append("resume")

    def dropSession(self, reason: str) -> None:
        self.calls.append("drop")
        assert self.session is not None
        self.session.fail(reason)

    def carries(self) -> Optional[Session]:
        return self.session


def session(name: str, started: float) -> Session:
    """
    @return: A session claimed at C{started}.
    """
    s = Session(lambda: started)
    s.claim(name)
    return s


class MemoryBoundTests(SynchronousTestCase):
    """
    Tests for L{MemoryBound}.
    """

    def setUp(self) -> None:
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.bound = MemoryBound(100)

    def logged(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def test_interfaces(self) -> None:
        """
        The cache link is a reader the bound can hold.
        """
        self.assertTrue(IBoundReader.implementedBy(CacheLinkProtocol))
        self.assertTrue(verifyObject(IBoundReader, FakeReader(None)))

    def test_noBound(self) -> None:
        """
        Without a limit, nothing is ever held; bytes are still counted.
        """
        bound = MemoryBound()
        reader = FakeReader(session("a", 0))
        bound.addReader(reader)
        bound.charge(reader.session, 1 << 40)  # type: ignore[arg-type]
        self.assertEqual((bound.held, bound.paused, reader.calls), (1 << 40, False, []))

    def test_holdsAndResumes(self) -> None:
        """
        Past three quarters of the bound only the oldest session in progress
        is read; at the bound no link is, with a log line, and a link opened
        meanwhile is held at once; freeing a released session's memory lets
        them all read again.
        """
        done = session("done", 0)
        done.complete()
        old = session("old", 1)
        new = session("new", 2)
        readers = [FakeReader(new), FakeReader(old), FakeReader(None)]
        for r in readers:
            self.bound.addReader(r)
        self.bound.charge(done, 60)
        self.bound.charge(new, 10)
        self.assertEqual([r.calls for r in readers], [[], [], []])
        self.bound.charge(old, 5)
        self.assertEqual([r.calls for r in readers], [["pause"], [], ["pause"]])
        self.assertIn("reading only the oldest session's link", self.logged())
        self.bound.charge(old, 25)
        self.assertEqual([r.calls for r in readers], [["pause"], ["pause"], ["pause"]])
        self.assertIn("memory bound reached: 100 bytes of images held, --max-memory 100", self.logged())
        late = FakeReader(None)
        self.bound.addReader(late)
        self.assertEqual(late.calls, ["pause"])
        # A complete session will be freed once restored: nothing is dropped.
        self.assertEqual((old.state, new.state), (SessionState.RECEIVING, SessionState.RECEIVING))
        self.bound.free(done)
        self.assertEqual((self.bound.held, self.bound.paused, self.bound.peak), (40, False, 100))
        self.assertEqual([r.calls[-1] for r in readers + [late]], ["resume"] * 4)
        self.assertIn("memory freed", self.logged())

    def test_completeOldestHandsOn(self) -> None:
        """
        Near the bound, once the oldest session completes, the next oldest
        is the one read.
        """
        first, second = session("first", 1), session("second", 2)
        readers = [FakeReader(first), FakeReader(second)]
        for r in readers:
            self.bound.addReader(r)
        self.bound.charge(first, 40)
        self.bound.charge(second, 40)
        self.assertEqual([r.calls for r in readers], [[], ["pause"]])
        first.complete()
        self.assertEqual([r.calls for r in readers], [["pause"], ["pause", "resume"]])

    def test_handsOnToSessionWithNothingCounted(self) -> None:
        """
        A session whose link was held before any of its bytes were counted
        is still in progress: once the oldest completes, its link is the one
        read, rather than no link at all while memory is left.
        """
        first, second = session("first", 1), session("second", 2)
        readers = [FakeReader(first), FakeReader(second)]
        for r in readers:
            self.bound.addReader(r)
        self.bound.charge(first, 80)
        self.assertEqual([r.calls for r in readers], [[], ["pause"]])
        first.complete()
        self.assertEqual([r.calls for r in readers], [["pause"], ["pause", "resume"]])
        self.assertEqual((self.bound.held, second.state), (80, SessionState.RECEIVING))

    def test_failedSessionFreed(self) -> None:
        """
        A session that fails frees its bytes at once.
        """
        s = session("a", 0)
        self.bound.charge(s, 70)
        s.fail("broken")
        self.assertEqual(self.bound.held, 0)
        self.bound.free(s)
        self.assertEqual(self.bound.held, 0)

    def test_singleSessionLargerThanBound(self) -> None:
        """
        One session alone reaching the bound, with nothing complete, is
        dropped with a reason naming the bound, instead of waiting forever;
        its memory is freed and links read again.
        """
        big = session("big", 0)
        reader = FakeReader(big)
        self.bound.addReader(reader)
        self.bound.charge(big, 100)
        self.assertIs(big.state, SessionState.FAILED)
        self.assertIn("--max-memory 100", big.failure or "")
        self.assertIn("larger than the bound", big.failure or "")
        self.assertEqual(reader.calls, ["pause", "drop", "resume"])
        self.assertIn("is dropped", self.logged())
        self.assertEqual((self.bound.held, self.bound.paused), (0, False))

    def test_newestDropped(self) -> None:
        """
        With several sessions in progress and none complete, the newest is
        dropped at the bound; the oldest goes on.
        """
        sessions = [session(name, started) for name, started in [("old", 1), ("new", 3), ("mid", 2)]]
        readers = [FakeReader(s) for s in sessions]
        for r in readers:
            self.bound.addReader(r)
        for s in sessions:
            self.bound.charge(s, 40)
        self.assertEqual([s.state for s in sessions], [SessionState.RECEIVING, SessionState.FAILED, SessionState.RECEIVING])
        self.assertEqual(self.bound.held, 80)
        self.assertEqual([r.calls[-1:] for r in readers], [["resume"], ["drop"], ["pause"]])


class ParseSizeTests(SynchronousTestCase):
    """
    Tests for L{parseSize}.
    """

    def test_sizes(self) -> None:
        """
        Plain numbers and K, M, G, T suffixes (powers of 1024), with an
        optional B or iB.
        """
        for text, size in [("512", 512), ("4k", 4096), ("20G", 20 << 30), ("1TiB", 1 << 40), ("3MB", 3 << 20)]:
            self.assertEqual(parseSize(text), size)

    def test_bad(self) -> None:
        """
        Anything else is refused.
        """
        for text in ["", "B", "-1", "0", "1.5G", "G", "10X"]:
            self.assertRaises(ValueError, parseSize, text)


class MemoryBoundIntegrationTests(TestCase):
    """
    Three proxies send three sessions into one cache with a memory bound
    smaller than their sum, over real TCP on 127.0.0.1, each restored over
    its own directory's socket.
    """

    timeout = 60

    async def test_threeSessions(self) -> None:
        """
        A session that completed is held until a restore reads it; two more
        sent at once meanwhile fill the cache up to its bound, where it
        stops reading their links instead of buffering, never holding much
        more than the bound (a read in flight per link). Once the restores
        read, memory is freed, the links are read again, and every session
        completes byte for byte.

        The first session completes before the others start: with three at
        once, whether the oldest can still complete past three quarters of
        the bound, or the newest is dropped (L{MemoryBound}), depends on
        how the reactor happened to share its reads among them.
        """
        root = tempfile.mkdtemp(prefix="imgrelay-memory-")
        bound = 20 << 20
        cache = imgrelay.CacheService(
            imgrelay.CacheConfig(listen="tcp:0:interface=127.0.0.1", sessionsRoot=root, maxMemory=bound), reactor
        )
        cache.startService()
        self.addCleanup(cache.stopService)
        port = (await cache.linkAddress()).port  # type: ignore[attr-defined]
        contents = {
            f"mig-{i}": {"pages-1.img": traces.patternBytes(f"pages-{i}", 8 << 20), "core-1.img": os.urandom(3000 + i)}
            for i in range(3)
        }

        reached: Deferred[None] = Deferred()
        seen: list[LogEvent] = []

        def boundReached(event: LogEvent) -> None:
            if not seen and str(event.get("log_format", "")).startswith("memory bound reached"):
                seen.append(event)
                # On the reactor's next turn: once the bound held every link.
                reactor.callLater(0, reached.callback, None)

        globalLogPublisher.addObserver(boundReached)  # type: ignore[arg-type]
        self.addCleanup(globalLogPublisher.removeObserver, boundReached)  # type: ignore[arg-type]

        def send(name: str) -> tuple[Deferred[None], Deferred[Any]]:
            """
            Start a proxy and dump session C{name} through it.

            @return: The dump's end, and the proxy's outcome.
            """
            dumpDir = tempfile.mkdtemp(prefix="imgrelay-memory-dump-")
            proxy = imgrelay.ProxyService(
                imgrelay.ProxyConfig(imagesDir=dumpDir, connect=f"tcp:host=127.0.0.1:port={port}", sessionName=name), reactor
            )
            over: Deferred[Any] = Deferred()
            proxy.addSessionObserver(over.callback)
            proxy.startService()
            self.addCleanup(proxy.stopService)

            def dump() -> None:
                d = criu.StreamDumper(os.path.join(dumpDir, "streamer-capture.sock"))
                for image, content in sorted(contents[name].items()):
                    d.send(image, content)
                d.finish()

            return deferToThread(dump), over

        def restore(name: str) -> Deferred[dict[str, Optional[bytes]]]:
            path = os.path.join(root, name, "streamer-serve.sock")

            def run() -> dict[str, Optional[bytes]]:
                r = criu.StreamRestorer(path)
                try:
                    return r.fetchAll(sorted(contents[name]))
                finally:
                    r.close()

            return deferToThread(run)

        first = send("mig-0")
        await first[0]
        outcome = await first[1]
        self.assertIsInstance(outcome, imgrelay.SessionOutcome)
        # Complete and not restored yet: all of it is held.
        self.assertEqual(cache.bound.held, outcome.bytes)
        # Two more at once: with the first held, they reach the bound (the
        # older of them may complete first; both cannot).
        others = [send(name) for name in ("mig-1", "mig-2")]
        await reached
        self.assertTrue(cache.bound.paused)
        self.assertGreaterEqual(cache.bound.peak, bound)
        self.assertFalse(all(over.called for _, over in others))
        # The restores read, the first's ends and frees its memory: the
        # links are read again.
        restored = {name: restore(name) for name in contents}
        for dumped, over in others:
            await dumped
            self.assertIsInstance(await over, imgrelay.SessionOutcome)
        for name, images in contents.items():
            self.assertEqual(await restored[name], images)
        # Bytes in flight when the bound was reached: a receive per link.
        self.assertLessEqual(cache.bound.peak, bound + 3 * (1 << 20))


class LinkRegistrationTests(SynchronousTestCase):
    """
    A cache link comes under the memory bound once its hello named a
    session, and is held or read by that session.
    """

    def test_helloReadAtTheBound(self) -> None:
        """
        With the bound near, a link that resumes the oldest session is read;
        one that starts a new session is held after its hello; neither is
        held before it, or it could never say which session it brings.
        """
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from imgrelay.cache.listener import CacheLinkFactory
        from imgrelay.cache.registry import SessionRegistry
        from tests.cache.helpers import hello

        reactor = MemoryReactorClock()
        bound = MemoryBound(100)
        factory = CacheLinkFactory(SessionRegistry(), reactor.seconds, reactor, bound=bound)
        transports = []
        for name in ("old", "new"):
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            self.assertEqual(transport.producerState, "producing")
            protocol.dataReceived(hello(name))
            transports.append((protocol, transport))
            if name == "old":
                session = protocol.state.session
                assert session is not None
                bound.charge(session, 80)
        self.assertEqual([t.producerState for _, t in transports], ["producing", "paused"])
