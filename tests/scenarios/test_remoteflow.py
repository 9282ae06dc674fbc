"""
Integration tests of CRIU's C{--remote} protocol: a proxy and a cache in
this process on real UNIX sockets, pipes and TCP on 127.0.0.1, driven by
the CRIU-like L{RemoteClient} in threads.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Union

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from imgrelay.config import CacheConfig, ProxyConfig
from imgrelay.transport.localsock import REMOTE_CACHE_SOCKET, REMOTE_PROXY_SOCKET
from imgrelay.cache.service import CacheService
from imgrelay.transport.localsock import localEndpoint
from imgrelay.proxy.service import ProxyService
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.wire.criu import O_RDONLY, O_WRONLY
from imgrelay.core.store import SessionState
from imgrelay.testing.criu import RemoteClient, writeAll
from imgrelay.testing.traces import patternBytes


class RemoteRelay:
    """
    A proxy and a cache in C{--protocol remote}, linked over TCP.
    """

    def __init__(self, case: TestCase, link: str = "imgrelay") -> None:
        self.case = case
        self.link = link
        base = tempfile.mkdtemp(prefix="imgrelay-remote-")
        self.dumpDir = os.path.join(base, "dump")
        self.restoreDir = os.path.join(base, "restore")
        os.mkdir(self.dumpDir, 0o700)
        os.mkdir(self.restoreDir, 0o700)
        self.dump = RemoteClient(os.path.join(self.dumpDir, REMOTE_PROXY_SOCKET))
        self.restore = RemoteClient(os.path.join(self.restoreDir, REMOTE_CACHE_SOCKET))
        self.outcomes: list[Union[SessionOutcome, Failure]] = []
        self.released: list[Any] = []

    async def start(self) -> "RemoteRelay":
        self.cache = CacheService(
            CacheConfig(
                listen="tcp:0:interface=127.0.0.1", local=localEndpoint(self.restoreDir, REMOTE_CACHE_SOCKET),
                protocol="remote", link=self.link,
            ),
            reactor,
        )
        self.cache.addSessionObserver(self.released.append)
        self.cache.startService()
        self.case.addCleanup(self.cache.stopService)
        address = await self.cache.linkAddress()
        self.proxy = ProxyService(
            ProxyConfig(
                local=localEndpoint(self.dumpDir, REMOTE_PROXY_SOCKET),
                connect=f"tcp:host=127.0.0.1:port={address.port}",  # type: ignore[attr-defined]
                sessionName="remote-test", protocol="remote", link=self.link,
            ),
            reactor,
        )
        self.proxy.addSessionObserver(self.outcomes.append)
        self.proxy.startService()
        self.case.addCleanup(self.proxy.stopService)
        return self

    async def waitFor(self, predicate: Any) -> None:
        for _ in range(6000):
            if predicate():
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("condition never held")


def predump(client: RemoteClient, snapshotId: str, pages: bytes, parent: bool = True) -> None:
    """
    What a pre-dump writes: its memory, its snapshot id; then FINISH.
    """
    client.pushParent(snapshotId)
    client.write(snapshotId, "pagemap-1.img", b"pagemap of " + snapshotId.encode())
    client.write(snapshotId, "pages-1.img", pages)
    client.finish(O_WRONLY)


class IterativeMigrationTests(TestCase):
    """
    Pre-dump, pre-dump, dump through one proxy, one link and one cache.
    """

    timeout = 120

    async def test_twoPredumpsAndDump(self) -> None:
        """
        Two pre-dumps and a final dump, each under its own snapshot id, make
        one session: the pre-dumps' FINISH leave it open, the dump's FINISH
        completes it, the cache serves every snapshot's images and the
        snapshot list in push order, and the restore's FINISH releases it.
        """
        relay = await RemoteRelay(self).start()
        pages = [patternBytes(f"pages-{i}", (1 << 20) + i) for i in range(3)]

        def dump() -> None:
            predump(relay.dump, "/mig/d1", pages[0])
            predump(relay.dump, "/mig/d2", pages[1])
            # The dump reads back the previous pagemap, then writes all.
            assert relay.dump.read("/mig/d2", "pagemap-1.img") == b"pagemap of /mig/d2"
            assert relay.dump.readParents() == ["/mig/d1", "/mig/d2"]
            relay.dump.pushParent("/mig/d3")
            for name, content in [("pstree.img", b"tree"), ("core-1.img", b"core"), ("pages-1.img", pages[2])]:
                relay.dump.write("/mig/d3", name, content)
            relay.dump.write("", "stats-dump", b"on the socket")
            relay.dump.write("/mig/d3", "inventory.img", b"inventory")
            relay.dump.finish(O_WRONLY)

        await deferToThread(dump)
        await relay.waitFor(lambda: relay.outcomes)
        outcome = relay.outcomes[0]
        self.assertIsInstance(outcome, SessionOutcome)
        assert isinstance(outcome, SessionOutcome)
        self.assertEqual(outcome.images, 9)

        def restore() -> dict[str, Any]:
            r = relay.restore
            got = {
                "parents": r.readParents(),
                "d1 pages": r.read("/mig/d1", "pages-1.img"),
                "d2 pages": r.read("/mig/d2", "pages-1.img"),
                "d3 pages": r.read("/mig/d3", "pages-1.img"),
                "inventory": r.read("/mig/d3", "inventory.img"),
                "socket": r.read("", "stats-dump"),
                "absent": r.read("/mig/d3", "memfd.img"),
            }
            r.finish(O_RDONLY)
            return got

        got = await deferToThread(restore)
        self.assertEqual(got, {
            "parents": ["/mig/d1", "/mig/d2", "/mig/d3"],
            "d1 pages": pages[0], "d2 pages": pages[1], "d3 pages": pages[2],
            "inventory": b"inventory", "socket": b"on the socket", "absent": None,
        })
        await relay.waitFor(lambda: relay.released)
        self.assertEqual(relay.released[0].state, SessionState.COMPLETE)

    async def test_restoreWaitsDuringDump(self) -> None:
        """
        A restore read of an image not dumped yet waits until it is
        verified; several readers of one image are all answered.
        """
        relay = await RemoteRelay(self).start()
        await deferToThread(relay.dump.write, "/mig/d1", "core-1.img", b"early")
        first = deferToThread(relay.restore.read, "/mig/d1", "pages-1.img")
        second = deferToThread(relay.restore.read, "/mig/d1", "pages-1.img")
        await relay.waitFor(lambda: relay.cache.slot.current.waiting == 2)
        self.assertFalse(first.called or second.called)
        await deferToThread(relay.dump.write, "/mig/d1", "pages-1.img", b"late pages")
        self.assertEqual([await first, await second], [b"late pages", b"late pages"])

    async def test_replaceAndAppend(self) -> None:
        """
        A second write of an image replaces it and an append adds to it, on
        the proxy (read back) and on the cache, without desynchronising the
        link; an empty image exists with no content.
        """
        relay = await RemoteRelay(self).start()

        def dump() -> tuple[Any, Any]:
            d = relay.dump
            d.write("/mig/d1", "a.img", b"first version")
            d.write("/mig/d1", "a.img", b"second")
            d.write("/mig/d1", "b.img", b"abc")
            d.write("/mig/d1", "b.img", b"def", append=True)
            d.write("/mig/d1", "empty.img", b"")
            d.write("/mig/d1", "pstree.img", b"t")
            back = d.read("/mig/d1", "a.img"), d.read("/mig/d1", "b.img")
            d.finish(O_WRONLY)
            return back

        self.assertEqual(await deferToThread(dump), (b"second", b"abcdef"))
        await relay.waitFor(lambda: relay.outcomes)
        self.assertIsInstance(relay.outcomes[0], SessionOutcome)
        r = relay.restore
        got = await deferToThread(lambda: [r.read("/mig/d1", n) for n in ("a.img", "b.img", "empty.img")])
        self.assertEqual(got, [b"second", b"abcdef", b""])

    async def test_finishOvertakesPipe(self) -> None:
        """
        A FINISH sent while pipes are still being written loses no image:
        the final handshake waits for every pipe to end.
        """
        relay = await RemoteRelay(self).start()
        big = patternBytes("big", 4 << 20)

        def dump() -> None:
            d = relay.dump
            d.write("/mig/d1", "pstree.img", b"t")
            w1 = d.openWrite("/mig/d1", "pages-1.img")
            w2 = d.openWrite("/mig/d1", "pages-2.img")
            writeAll(w1, big[:1000])
            d.finish(O_WRONLY)
            writeAll(w2, b"second pipe")
            os.close(w2)
            writeAll(w1, big[1000:])
            os.close(w1)

        await deferToThread(dump)
        await relay.waitFor(lambda: relay.outcomes)
        outcome = relay.outcomes[0]
        self.assertIsInstance(outcome, SessionOutcome)
        r = relay.restore
        got = await deferToThread(lambda: (r.read("/mig/d1", "pages-1.img"), r.read("/mig/d1", "pages-2.img")))
        self.assertEqual(got, (big, b"second pipe"))

    async def test_proxyReadOfUnknownImage(self) -> None:
        """
        On the proxy, a read of an image never written gets ENOENT at once;
        one still being written is served once complete.
        """
        relay = await RemoteRelay(self).start()
        self.assertIsNone(await deferToThread(relay.dump.read, "/mig/d1", "nothing.img"))
        w = await deferToThread(relay.dump.openWrite, "/mig/d1", "pages-1.img")
        reading = deferToThread(relay.dump.read, "/mig/d1", "pages-1.img")
        await deferToThread(writeAll, w, b"written while read")
        os.close(w)
        self.assertEqual(await reading, b"written while read")

    async def test_secondWriteOfLargeImage(self) -> None:
        """
        A second write of an image of more than 4 KiB replaces it whole
        (CRIU's daemons appended it, or dropped it past 4 KiB).
        """
        relay = await RemoteRelay(self).start()
        first, second = patternBytes("v1", 9000), patternBytes("v2", 10000)

        def dump() -> Any:
            relay.dump.write("/mig/d1", "pages-1.img", first)
            relay.dump.write("/mig/d1", "pages-1.img", second)
            relay.dump.write("/mig/d1", "pstree.img", b"t")
            back = relay.dump.read("/mig/d1", "pages-1.img")
            relay.dump.finish(O_WRONLY)
            return back

        self.assertEqual(await deferToThread(dump), second)
        await relay.waitFor(lambda: relay.outcomes)
        self.assertEqual(await deferToThread(relay.restore.read, "/mig/d1", "pages-1.img"), second)

    async def test_concurrentPipes(self) -> None:
        """
        Several pipes written at once, in interleaved pieces, each arrive
        whole.
        """
        relay = await RemoteRelay(self).start()
        contents = {f"pages-{i}.img": patternBytes(f"c{i}", 300000 + i) for i in range(6)}

        def dump() -> None:
            pipes = {n: relay.dump.openWrite("/mig/d1", n) for n in contents}
            for start in range(0, 300006, 50000):
                for name, w in pipes.items():
                    writeAll(w, contents[name][start : start + 50000])
            for w in pipes.values():
                os.close(w)
            relay.dump.write("/mig/d1", "pstree.img", b"t")
            relay.dump.finish(O_WRONLY)

        await deferToThread(dump)
        await relay.waitFor(lambda: relay.outcomes)
        self.assertIsInstance(relay.outcomes[0], SessionOutcome)
        got = await deferToThread(lambda: {n: relay.restore.read("/mig/d1", n) for n in contents})
        self.assertEqual(got, contents)


class CriuLinkFormatTests(TestCase):
    """
    The proxy and the cache speaking CRIU's own proxy-to-cache format
    (C{--link criu}), as each would with one of CRIU's daemons.
    """

    timeout = 60

    async def test_iterativeMigration(self) -> None:
        """
        Pre-dump, dump and restore work over CRIU's format too: every image,
        replaced and appended ones and an empty one included, and the
        snapshot list arrive; the session completes when the link closes.
        """
        relay = await RemoteRelay(self, link="criu").start()

        def dump() -> None:
            predump(relay.dump, "/mig/d1", patternBytes("p1", 70000))
            d = relay.dump
            d.pushParent("/mig/d2")
            d.write("/mig/d2", "empty.img", b"")
            d.write("/mig/d2", "a.img", b"one")
            d.write("/mig/d2", "a.img", b"two")
            d.write("/mig/d2", "b.img", b"abc")
            d.write("/mig/d2", "b.img", b"def", append=True)
            d.write("/mig/d2", "pstree.img", b"tree")
            d.finish(O_WRONLY)

        await deferToThread(dump)
        await relay.waitFor(lambda: relay.outcomes)
        self.assertIsInstance(relay.outcomes[0], SessionOutcome)
        r = relay.restore
        got = await deferToThread(lambda: (
            r.readParents(), r.read("/mig/d1", "pages-1.img"), r.read("/mig/d2", "empty.img"),
            r.read("/mig/d2", "a.img"), r.read("/mig/d2", "b.img"), r.read("/mig/d2", "pstree.img"),
        ))
        self.assertEqual(got, (["/mig/d1", "/mig/d2"], patternBytes("p1", 70000), b"", b"two", b"abcdef", b"tree"))
