"""
Integration tests: a proxy and a cache in this process, on real UNIX
sockets, pipes and TCP on 127.0.0.1, driven by the CRIU-like client of
L{imgrelay.testing.criu} in threads, replaying the real CRIU traces.
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import Any, Optional, Union

from twisted.internet import main, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imgrelay.core.limits import Limits
from imgrelay.config import CacheConfig, ProxyConfig
from imgrelay.transport.localsock import CAPTURE_SOCKET, SERVE_SOCKET
from imgrelay.cache.service import CacheService
from imgrelay.core.errors import SessionError
from imgrelay.core.imagedata import ImageData
from imgrelay.core.integrity import RunningChecksum
from imgrelay.local.streamserve import StreamServeProtocol
from imgrelay.wire.criu import streamReply
from imgrelay.wire.pb.criu_pb2 import StreamRequest
from imgrelay.transport.localsock import localEndpoint
from imgrelay.proxy.service import ProxyService
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.core.store import Image, SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.testing import criu, traces


class Relay:
    """
    A proxy and a cache wired together over TCP on 127.0.0.1.
    """

    def __init__(self, case: TestCase) -> None:
        self.case = case
        base = tempfile.mkdtemp(prefix="imgrelay-test-")
        self.dumpDir = os.path.join(base, "dump")
        self.restoreDir = os.path.join(base, "restore")
        os.mkdir(self.dumpDir, 0o700)
        os.mkdir(self.restoreDir, 0o700)
        self.capture = os.path.join(self.dumpDir, CAPTURE_SOCKET)
        self.serve = os.path.join(self.restoreDir, SERVE_SOCKET)
        self.outcomes: list[Union[SessionOutcome, Failure]] = []
        self.released: list[Any] = []

    async def start(self, sessionName: str = "test-session") -> "Relay":
        self.cache = CacheService(
            CacheConfig(listen="tcp:0:interface=127.0.0.1", local=localEndpoint(self.restoreDir, SERVE_SOCKET)), reactor
        )
        self.cache.addSessionObserver(self.released.append)
        self.cache.startService()
        self.case.addCleanup(self.cache.stopService)
        address = await self.cache.linkAddress()
        self.proxy = ProxyService(
            ProxyConfig(
                local=localEndpoint(self.dumpDir, CAPTURE_SOCKET),
                connect=f"tcp:host=127.0.0.1:port={address.port}",  # type: ignore[attr-defined]
                sessionName=sessionName,
            ),
            reactor,
        )
        self.proxy.addSessionObserver(self.outcomes.append)
        self.proxy.startService()
        self.case.addCleanup(self.proxy.stopService)
        return self

    async def waitOutcome(self, count: int = 1) -> Union[SessionOutcome, Failure]:
        """
        Wait (polling the reactor, not the wall clock's pace) until the
        proxy reported C{count} session outcomes.
        """
        for _ in range(6000):
            if len(self.outcomes) >= count:
                return self.outcomes[count - 1]
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("no session outcome")

    async def waitFor(self, predicate: Any) -> None:
        for _ in range(6000):
            if predicate():
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("condition never held")


def traceWithBigImage(size: int) -> tuple[dict[str, bytes], list[dict]]:  # type: ignore[type-arg]
    images = traces.traceImages()
    images["pages-big.img"] = traces.patternBytes("pages-big.img", size)
    events = traces.loadTrace("dump-stream.json")["events"]
    # The big image opens early and closes late, as CRIU's pages do.
    events = events[:3] + [{"op": "open", "name": "pages-big.img"}] + events[3:-1] + [
        {"op": "close", "name": "pages-big.img"}, events[-1]]
    return images, events


class StreamMigrationTests(TestCase):
    """
    A whole C{--stream} migration through proxy, link and cache.
    """

    timeout = 120

    async def test_traceReplayRestoreFirst(self) -> None:
        """
        The recorded CRIU dump replayed event by event (several pipes open
        at once, a 3 MiB image among them) reaches a restore that connected
        before the dump began: every image byte-identical, every image the
        dump did not write answered "does not exist", and the proxy told
        the session is complete.
        """
        relay = await Relay(self).start()
        images, events = traceWithBigImage(3 << 20)
        names = [name for name, _ in traces.restoreNames()] + sorted(n for n in images if n.startswith("pages-"))

        def restore() -> dict[str, Optional[bytes]]:
            r = criu.StreamRestorer(relay.serve)
            try:
                return r.fetchAll(names)
            finally:
                r.close()

        restored = deferToThread(restore)
        await deferToThread(traces.replayDump, relay.capture, images, events)
        result = await restored
        for name, existed in traces.restoreNames():
            self.assertEqual(result[name] is not None, existed, name)
        for name, content in images.items():
            self.assertEqual(result[name], content, name)
        outcome = await relay.waitOutcome()
        self.assertIsInstance(outcome, SessionOutcome)
        assert isinstance(outcome, SessionOutcome)
        self.assertEqual((outcome.images, outcome.bytes), (len(images), sum(map(len, images.values()))))
        await relay.waitFor(lambda: relay.released)
        self.assertEqual(relay.released[0].state, SessionState.COMPLETE)

    async def test_restoreAfterDump(self) -> None:
        """
        A restore that connects after the session completed is answered at
        once from memory.
        """
        relay = await Relay(self).start()
        images = traces.traceImages()
        await deferToThread(traces.replayDump, relay.capture, images)
        await relay.waitOutcome()
        r = criu.StreamRestorer(relay.serve)
        result = await deferToThread(r.fetchAll, list(images) + ["memfd.img"])
        r.close()
        self.assertEqual(result, {**images, "memfd.img": None})

    async def test_requestWaitsForImageStillArriving(self) -> None:
        """
        A restore request for an image whose pipe is still being written is
        answered only once the image is verified, with all of it.
        """
        relay = await Relay(self).start()
        dumper = await deferToThread(criu.StreamDumper, relay.capture)
        w = await deferToThread(dumper.open, "pages-1.img")
        await deferToThread(criu.writeAll, w, b"first half ")
        restorer = await deferToThread(criu.StreamRestorer, relay.serve)
        fetched = deferToThread(restorer.fetch, "pages-1.img")
        await relay.waitFor(lambda: relay.cache.slot.current.waiting == 1)
        self.assertFalse(fetched.called)
        await deferToThread(criu.writeAll, w, b"and the rest")
        os.close(w)
        self.assertEqual(await fetched, b"first half and the rest")
        dumper.finish()
        restorer.close()
        self.assertIsInstance(await relay.waitOutcome(), SessionOutcome)

    async def test_slowPipeDoesNotBlockOthers(self) -> None:
        """
        A restore that leaves a large image's pipe unread still gets every
        other image: the cache never blocks on one pipe.
        """
        relay = await Relay(self).start()
        big = traces.patternBytes("big", 8 << 20)
        images = {"pages-1.img": big, "core-1.img": b"core", "mm-1.img": b"mm" * 1000}

        def dump() -> None:
            d = criu.StreamDumper(relay.capture)
            for name, content in images.items():
                d.send(name, content)
            d.finish()

        await deferToThread(dump)
        await relay.waitOutcome()

        def restore() -> tuple[bytes, Optional[bytes], Optional[bytes]]:
            r = criu.StreamRestorer(relay.serve)
            bigPipe = r.request("pages-1.img")
            assert bigPipe is not None
            core = r.fetch("core-1.img")
            mm = r.fetch("mm-1.img")
            content = criu.readAll(bigPipe)
            os.close(bigPipe)
            r.close()
            return content, core, mm

        self.assertEqual(await deferToThread(restore), (big, b"core", b"mm" * 1000))

    async def test_emptyImage(self) -> None:
        """
        An empty image exists after the migration, with no content.
        """
        relay = await Relay(self).start()

        def dump() -> None:
            d = criu.StreamDumper(relay.capture)
            d.send("empty.img", b"")
            d.finish()

        await deferToThread(dump)
        await relay.waitOutcome()
        r = criu.StreamRestorer(relay.serve)
        self.assertEqual(await deferToThread(r.fetch, "empty.img"), b"")
        r.close()

    async def test_secondSessionAfterRestore(self) -> None:
        """
        Without --oneshot both daemons serve a second migration after the
        first one was restored.
        """
        relay = await Relay(self).start()
        for round, content in enumerate([b"first", b"second"], 1):
            def dump() -> None:
                d = criu.StreamDumper(relay.capture)
                d.send("inventory.img", content)
                d.close()

            await deferToThread(dump)
            outcome = await relay.waitOutcome(round)
            self.assertIsInstance(outcome, SessionOutcome)
            r = criu.StreamRestorer(relay.serve)
            self.assertEqual(await deferToThread(r.fetch, "inventory.img"), content)
            r.close()
            await relay.waitFor(lambda: len(relay.released) == round)


class CaptureBadInputTests(TestCase):
    """
    Bad input on the dump socket fails that session with a logged reason;
    the cache learns of it, and the proxy goes on serving.
    """

    timeout = 60

    async def _failedDump(self, relay: Relay, send: Any, expected: str) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        restorer = await deferToThread(criu.StreamRestorer, relay.serve)
        fetched = deferToThread(restorer.fetch, "inventory.img")
        await deferToThread(send)
        outcome = await relay.waitOutcome()
        self.assertIsInstance(outcome, Failure)
        assert isinstance(outcome, Failure)
        outcome.trap(SessionError)
        self.assertIn(expected, outcome.getErrorMessage())
        # The restore waiting for an image of that session is told it does
        # not exist, and the cache says why.
        self.assertIsNone(await fetched)
        restorer.close()
        await relay.waitFor(lambda: relay.released)
        self.assertEqual(relay.released[0].state, SessionState.FAILED)
        self.assertIn(expected, relay.released[0].failure)
        logged = " ".join(str(e.get("reason", "")) for e in events)
        self.assertIn(expected, logged)
        # The proxy still serves: a good dump goes through.
        await deferToThread(traces.replayDump, relay.capture, traces.traceImages())
        self.assertIsInstance(await relay.waitOutcome(2), SessionOutcome)

    async def test_hostileNames(self) -> None:
        """
        Image names that are empty, C{.}, C{..}, hold a C{/} or a NUL each
        fail their session.
        """
        for name, expected in [
            ("", "empty image name"),
            ("..", "not a file name"),
            (".", "not a file name"),
            ("../../etc/passwd", "holds a '/'"),
            ("a\0b", "holds a NUL"),
        ]:
            relay = await Relay(self).start()

            def send() -> None:
                d = criu.StreamDumper(relay.capture)
                d.send("core-1.img", b"ok")
                try:
                    d.send(name, b"evil")
                except OSError:
                    pass  # the proxy may already have closed the pipe
                d.close()

            await self._failedDump(relay, send, expected)

    async def test_missingFd(self) -> None:
        """
        A request whose 0x00 byte comes without a passed pipe fails the
        session.
        """
        relay = await Relay(self).start()

        def send() -> None:
            sock = criu.connect(relay.capture)
            sock.sendall(criu.frame(StreamRequest(filename="pages-1.img")) + b"\x00")
            sock.recv(1)  # until the proxy closes it
            sock.close()

        await self._failedDump(relay, send, "came without a pipe")

    async def test_wrongFdByte(self) -> None:
        """
        A byte other than 0x00 where a pipe's byte belongs fails the session.
        """
        relay = await Relay(self).start()

        def send() -> None:
            sock = criu.connect(relay.capture)
            sock.sendall(criu.frame(StreamRequest(filename="pages-1.img")) + b"\x07")
            sock.recv(1)
            sock.close()

        await self._failedDump(relay, send, "0x00 byte")

    async def test_oversizedHeader(self) -> None:
        """
        A length prefix over 64 KiB fails the session before anything is
        buffered.
        """
        relay = await Relay(self).start()

        def send() -> None:
            sock = criu.connect(relay.capture)
            sock.sendall(struct.pack("<I", 1 << 30))
            sock.recv(1)
            sock.close()

        await self._failedDump(relay, send, "header of 1073741824 bytes")

    async def test_malformedHeader(self) -> None:
        """
        A header that is not a request fails the session.
        """
        relay = await Relay(self).start()

        def send() -> None:
            sock = criu.connect(relay.capture)
            sock.sendall(struct.pack("<I", 3) + b"\xff\xff\xff")
            sock.recv(1)
            sock.close()

        await self._failedDump(relay, send, "undecodable header")

    async def test_truncatedRequest(self) -> None:
        """
        A dump connection that ends in the middle of a request fails the
        session instead of completing it.
        """
        relay = await Relay(self).start()

        def send() -> None:
            d = criu.StreamDumper(relay.capture)
            d.send("core-1.img", b"ok")
            d.sock.sendall(criu.frame(StreamRequest(filename="pages-1.img"))[:7])
            d.close()

        await self._failedDump(relay, send, "in the middle of a request")


class ServeBadInputTests(TestCase):
    """
    Bad input on the restore socket closes that connection only.
    """

    timeout = 60

    async def _completed(self) -> Relay:
        relay = await Relay(self).start()
        await deferToThread(traces.replayDump, relay.capture, traces.traceImages())
        await relay.waitOutcome()
        return relay

    async def _closedAndOthersServed(self, relay: Relay, send: Any, expected: str) -> None:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        good = await deferToThread(criu.StreamRestorer, relay.serve)
        await deferToThread(send)
        logged = " ".join(str(e.get("reason", "")) for e in events)
        self.assertIn(expected, logged)
        self.assertEqual(await deferToThread(good.fetch, "pstree.img"), traces.traceImages()["pstree.img"])
        good.close()

    async def test_hostileName(self) -> None:
        """
        A restore asking for C{../x} is disconnected; another restore is
        served.
        """
        relay = await self._completed()

        def send() -> None:
            sock = criu.connect(relay.serve)
            sock.sendall(criu.frame(StreamRequest(filename="../inventory.img")))
            self.assertEqual(sock.recv(100), b"")
            sock.close()

        await self._closedAndOthersServed(relay, send, "holds a '/'")

    async def test_missingFdAfterReply(self) -> None:
        """
        A restore that answers "exists" with a bare 0x00 byte and no pipe is
        disconnected.
        """
        relay = await self._completed()

        def send() -> None:
            sock = criu.connect(relay.serve)
            sock.sendall(criu.frame(StreamRequest(filename="inventory.img")))
            self.assertEqual(sock.recv(6), bytes.fromhex("020000000801"))
            sock.sendall(b"\x00")
            self.assertEqual(sock.recv(100), b"")
            sock.close()

        await self._closedAndOthersServed(relay, send, "was not followed by a pipe")

    async def test_readerGoesAway(self) -> None:
        """
        A restore that closes an image's pipe before reading it is logged;
        the cache goes on serving.
        """
        relay = await Relay(self).start()

        def dump() -> None:
            d = criu.StreamDumper(relay.capture)
            d.send("pages-1.img", traces.patternBytes("p", 4 << 20))
            d.finish()

        await deferToThread(dump)
        await relay.waitOutcome()

        def send() -> None:
            r = criu.StreamRestorer(relay.serve)
            fd = r.request("pages-1.img")
            assert fd is not None
            os.close(fd)
            r.close()

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await deferToThread(send)
        await relay.waitFor(lambda: any("failed" in str(e.get("log_format", "")) for e in events))
        # The cache goes on: the next migration is served.
        await deferToThread(traces.replayDump, relay.capture, traces.traceImages())
        self.assertIsInstance(await relay.waitOutcome(2), SessionOutcome)
        r = criu.StreamRestorer(relay.serve)
        self.assertEqual(await deferToThread(r.fetch, "pstree.img"), traces.traceImages()["pstree.img"])
        r.close()


class ServedCountTests(SynchronousTestCase):
    """
    An image counts as served once its pipe accepted all of it, whatever
    CRIU does with the pipe next. The reactor's turns are taken by hand, as
    epoll takes them, so that CRIU's close falls between two of them.
    """

    def test_readerClosesAtOnceAfterLastByte(self) -> None:
        """
        CRIU reads exactly the image and closes its pipe at once, before
        the writer's next turn (the reactor then reports the hang-up
        instead of giving the writer that turn): no error is logged and the
        image is counted among those served.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)  # type: ignore[arg-type]
        content = traces.patternBytes("pages", 300 << 10)
        data = ImageData()
        data.append(content)
        data.close()
        checksum = RunningChecksum()
        checksum.update(content)
        slot = SessionSlot()
        session = slot.claim("mig")
        session.addVerified(Image("", "pages-1.img", data, checksum.crc))
        session.complete()
        fdReactor = MemoryReactorClock()
        protocol = StreamServeProtocol(slot, fdReactor, Limits(), lambda: None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        r, w = os.pipe()
        protocol.dataReceived(criu.frame(StreamRequest(filename="pages-1.img")))
        self.assertEqual(transport.value(), streamReply(True))
        protocol.fileDescriptorReceived(w)
        protocol.dataReceived(b"\x00")
        [writer] = fdReactor.getWriters()
        os.set_blocking(r, False)
        got = b""
        why = None
        while why is None and len(got) < len(content):
            # The writer's turn, then CRIU reads what the pipe holds.
            why = writer.doWrite()
            try:
                got += os.read(r, len(content) - len(got))
            except BlockingIOError:
                pass
        os.close(r)
        self.assertEqual(got, content)
        # The reactor's next turn: what the writer's last turn returned,
        # else the hang-up of the read end closed meanwhile.
        writer.connectionLost(Failure(why if why is not None else main.CONNECTION_LOST))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(protocol.served, 1)
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])
        [ended] = [e for e in events if "images served" in e["log_format"]]
        self.assertEqual(ended["served"], 1)


class OneSessionProxyTests(TestCase):
    """
    A proxy that serves one session (C{--oneshot}) refuses a second dump
    instead of failing the first.
    """

    timeout = 60

    async def test_secondDumpRefused(self) -> None:
        """
        While the first dump runs, a second dump connection is closed with a
        logged reason; the first completes.
        """
        relay = await Relay(self).start()
        relay.proxy.maxSessions = 1
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        first = await deferToThread(criu.StreamDumper, relay.capture)
        await deferToThread(first.send, "core-1.img", b"core")

        def second() -> bytes:
            d = criu.StreamDumper(relay.capture)
            try:
                return d.sock.recv(1)
            finally:
                d.close()

        self.assertEqual(await deferToThread(second), b"")
        await deferToThread(first.send, "inventory.img", b"inventory")
        first.close()
        outcome = await relay.waitOutcome()
        self.assertIsInstance(outcome, SessionOutcome)
        self.assertEqual(len(relay.outcomes), 1)
        logged = " ".join(str(e.get("reason", "")) for e in events)
        self.assertIn("serves 1 session(s)", logged)
