"""
Integration tests of what the daemons report: a real cache (and proxy)
service in-process on 127.0.0.1, driven over real sockets, with its status
fd on a pipe and its C{/status} and C{/metrics} read over real HTTP.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

from crc32c import crc32c
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

import imgrelay
from imgrelay.transport.pipes import PipeReader
from imgrelay.observe.stats import DaemonStats, SessionStats
from imgrelay.testing import criu, traces
from tests.observe.test_web import samples
from tests.cache.helpers import chunk, done, hello, imageClose, imageOpen, wholeImage
from tests.observe.test_statusfd import fillPipe


def sessionEvent(stats: DaemonStats, wanted: str, name: str) -> Deferred[SessionStats]:
    """
    @return: A Deferred firing with the session named C{name} once C{stats}
        tells event C{wanted} of it.
    """
    d: Deferred[SessionStats] = Deferred()

    def listener(event: str, session: SessionStats) -> None:
        if event == wanted and session.name == name and not d.called:
            d.callback(session)

    stats.addListener(listener)
    return d


class _RawLink(Protocol):
    """
    A proxy written by hand: sends given bytes on the link, and tells when
    the link closed.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed.callback(None)


class ObservabilityTests(TestCase):
    """
    The status fd, C{/status} and C{/metrics} of daemons that migrate.
    """

    timeout = 60

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.addCleanup(os.close, w)
        return r, w

    def startCache(self, **options: Any) -> imgrelay.CacheService:
        self.restoreDir = tempfile.mkdtemp()
        cache = imgrelay.CacheService(
            imgrelay.CacheConfig(
                imagesDir=self.restoreDir, listen="tcp:0:interface=127.0.0.1",
                observability=imgrelay.Observability(**options),
            ),
            reactor,
        )
        cache.startService()
        self.addCleanup(cache.stopService)
        return cache

    async def rawSession(self, cache: imgrelay.CacheService, data: bytes) -> _RawLink:
        port = (await cache.linkAddress()).port  # type: ignore[attr-defined]
        link = _RawLink(data)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), link)
        return link

    async def get(self, port: int, path: str) -> bytes:
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
        self.assertEqual(response.code, 200)
        return await readBody(response)

    async def test_statusFdAndHttp(self) -> None:
        """
        A cache's status fd tells, in order, that it listens (with its link
        port, its socket and its HTTP port), then of a session migrated by a
        real proxy its first image and completion, then of a session whose
        image had a wrong checksum its first image and failure; C{/status}
        and C{/metrics}, read over HTTP after each session, count them, the
        checksum error included; the stats file has a line per session.
        """
        r, w = self.pipe()
        self.addCleanup(os.close, r)
        statsFile = os.path.join(tempfile.mkdtemp(), "stats.jsonl")
        cache = self.startCache(statusFd=w, http="tcp:0:interface=127.0.0.1", statsFile=statsFile)
        httpPort = (await cache.observer.httpAddress())["port"]
        linkPort = (await cache.linkAddress()).port  # type: ignore[attr-defined]
        stats = cache.observer.stats

        # A session migrated through a real proxy, restored as it arrives.
        dumpDir = tempfile.mkdtemp()
        pr, pw = self.pipe()
        self.addCleanup(os.close, pr)
        proxy = imgrelay.ProxyService(
            imgrelay.ProxyConfig(
                imagesDir=dumpDir, connect=f"tcp:host=127.0.0.1:port={linkPort}", sessionName="good",
                observability=imgrelay.Observability(statusFd=pw),
            ),
            reactor,
        )
        proxy.startService()
        self.addCleanup(proxy.stopService)
        proxyDone = sessionEvent(proxy.observer.stats, "complete", "good")
        complete = sessionEvent(stats, "complete", "good")
        released: Deferred[Any] = Deferred()
        cache.addSessionObserver(lambda s: released.called or released.callback(s))
        images = {"inventory.img": b"inventory", "pages-1.img": traces.patternBytes("pages-1.img", 3 << 20)}

        def migrate() -> dict[str, Optional[bytes]]:
            d = criu.StreamDumper(os.path.join(dumpDir, "streamer-capture.sock"))
            for name, content in images.items():
                d.send(name, content)
            d.close()
            restorer = criu.StreamRestorer(os.path.join(self.restoreDir, "streamer-serve.sock"))
            got = restorer.fetchAll(images)
            restorer.close()
            return got

        self.assertEqual(await deferToThread(migrate), images)
        good = await complete
        await released
        self.assertEqual((good.images, good.bytes), (2, sum(map(len, images.values()))))
        status = json.loads(await self.get(httpPort, "/status"))
        self.assertEqual((status["daemon"], status["version"]), ("cache", imgrelay.__version__))
        self.assertEqual(
            [(s["name"], s["state"], s["images"], s["bytes"], s["error"]) for s in status["sessions"]],
            [("good", "complete", 2, good.bytes, None)],
        )
        self.assertEqual(status["totals"]["sessions"], {"complete": 1, "failed": 0})
        got = samples((await self.get(httpPort, "/metrics")).decode())
        self.assertEqual(got[("imgrelay_sessions_total", (("outcome", "complete"),))], 1.0)
        self.assertEqual(got[("imgrelay_bytes_total", ())], float(good.bytes))
        self.assertEqual(got[("imgrelay_images_total", ())], 2.0)
        self.assertEqual(got[("imgrelay_errors_total", (("kind", "checksum"),))], 0.0)

        # A session whose second image arrives damaged.
        failed = sessionEvent(stats, "failed", "bad")
        link = await self.rawSession(
            cache,
            hello("bad") + wholeImage(1, "a.img", b"good") + imageOpen(2, "b.img") + chunk(2, b"data")
            + imageClose(2, b"data", crc=crc32c(b"datA")),
        )
        bad = await failed
        await link.closed
        self.assertIn("checksum mismatch", bad.error or "")
        status = json.loads(await self.get(httpPort, "/status"))
        self.assertEqual([(s["name"], s["state"]) for s in status["sessions"]], [("good", "complete"), ("bad", "failed")])
        self.assertIn("checksum mismatch", status["sessions"][1]["error"])
        self.assertEqual(status["totals"]["errors"], {"checksum": 1, "protocol": 0, "other": 0})
        got = samples((await self.get(httpPort, "/metrics")).decode())
        self.assertEqual(got[("imgrelay_errors_total", (("kind", "checksum"),))], 1.0)
        self.assertEqual(got[("imgrelay_sessions_total", (("outcome", "failed"),))], 1.0)
        self.assertEqual(got[("imgrelay_sessions_total", (("outcome", "complete"),))], 1.0)
        self.assertEqual(got[("imgrelay_active_sessions", ())], 0.0)

        events = [json.loads(line) for line in os.read(r, 1 << 20).splitlines()]
        self.assertEqual(
            [(e["event"], e.get("session")) for e in events],
            [("listening", None), ("first-image", "good"), ("complete", "good"), ("first-image", "bad"),
             ("failed", "bad")],
        )
        listening = events[0]
        self.assertEqual(listening["link"], {"host": "127.0.0.1", "port": linkPort})
        self.assertEqual(listening["http"], {"host": "127.0.0.1", "port": httpPort})
        self.assertEqual(listening["local"], {"path": os.path.join(self.restoreDir, "streamer-serve.sock")})
        self.assertEqual(events[2]["stats"]["images"], 2)
        self.assertIn("checksum mismatch", events[4]["cause"])
        with open(statsFile) as f:
            self.assertEqual([json.loads(line)["outcome"] for line in f], ["complete", "failed"])

        # The proxy's status fd: listening on its socket, its first image
        # verified by the cache, then the session as the cache confirmed it.
        await proxyDone
        proxyEvents = [json.loads(line) for line in os.read(pr, 1 << 20).splitlines()]
        self.assertEqual([e["event"] for e in proxyEvents], ["listening", "first-image", "complete"])
        self.assertEqual(proxyEvents[0]["local"], {"path": os.path.join(dumpDir, "streamer-capture.sock")})
        self.assertEqual((proxyEvents[2]["stats"]["images"], proxyEvents[2]["stats"]["bytes"]), (2, good.bytes))

    async def test_statusFdNotRead(self) -> None:
        """
        A status fd nobody reads does not hold the cache up: a session
        completes while its lines wait, and they follow in order once the
        reader reads.
        """
        r, w = self.pipe()
        held = fillPipe(w)
        cache = self.startCache(statusFd=w)
        complete = sessionEvent(cache.observer.stats, "complete", "mig")
        content = traces.patternBytes("big.img", 2 << 20)
        link = await self.rawSession(cache, hello("mig") + wholeImage(1, "big.img", content) + done([("", "big.img", content)]))
        session = await complete
        self.assertEqual(session.bytes, len(content))
        writer = cache.observer.statusWriter
        assert writer is not None
        self.assertGreater(writer.pending, 0)
        assert link.transport is not None
        link.transport.loseConnection()
        await link.closed

        # Now read: the filler, then the three lines.
        received = bytearray()
        lines: Deferred[None] = Deferred()

        def dataReceived(data: bytes) -> None:
            received.extend(data)
            if received.count(b"\n") == 3 and not lines.called:
                reader.stopReading()
                lines.callback(None)

        reader = PipeReader(r, reactor, dataReceived, lambda e: None)
        self.addCleanup(reader.abort)
        reader.startReading()
        await lines
        self.assertEqual(bytes(received[:held]), b"x" * held)
        events = [json.loads(line) for line in bytes(received[held:]).splitlines()]
        self.assertEqual([e["event"] for e in events], ["listening", "first-image", "complete"])
