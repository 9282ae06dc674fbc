"""
The fault matrix, end to end: a migration through the real twistd daemons
(C{--oneshot}) while a relay between proxy and cache resets the link, or a
process is killed with SIGKILL, at a chosen point of the link protocol
(L{tests.e2e.faultrelay.POINTS}).

Every cell ends within a bounded time, with the right exit status on each
side: 0 where the migration completed (a reset is resumed), non-zero with
the reason in the log otherwise. The restore gets the whole verified image
set, byte for byte, or a clear failure (images answered as absent, or its
socket closed): never a partial image from a cache that is alive.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from typing import Callable, Optional, Union


from imgrelay.testing import criu
from imgrelay.testing.daemons import Daemon
from tests.e2e import dumpclient
from tests.e2e.faultrelay import POINTS, FaultRelay
from tests.e2e.test_e2e import _DaemonCase

#: Seconds any process of a cell may take to end once the fault struck.
BOUND = 60

#: Seconds each daemon waits for the other after losing its link.
GIVE_UP = "3"


class _Cell:
    """
    What one cell of the matrix ended with.
    """

    proxy: Optional[int] = None
    cache: Optional[int] = None
    dumper: Optional[int] = None
    restored: Union[dict[str, Optional[bytes]], BaseException, None] = None


class FaultMatrixTests(_DaemonCase):
    """
    Resets and kills at every point of the link.
    """

    def runCell(self, point: str, victim: Optional[str]) -> _Cell:
        """
        Migrate L{dumpclient.images} through a relay that, at C{point},
        resets the link (C{victim} None) or kills C{victim} (C{"proxy"},
        C{"cache"} or C{"dumper"}).
        """
        processes: dict[str, Callable[[], Optional[subprocess.Popen[bytes]]]] = {}

        def strike() -> None:
            process = processes[victim]() if victim is not None else None
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)

        relay = FaultRelay(self.port, point, strike if victim is not None else None)
        self.addCleanup(relay.stop)
        cache = self.cache("--oneshot", "--resume-timeout", GIVE_UP)
        proxy = self.daemon(
            "imgrelay-proxy", "--connect", f"tcp:host=127.0.0.1:port={relay.port}", "--images-dir", self.dumpDir,
            "--oneshot", "--reconnect-timeout", GIVE_UP,
        )
        cache.waitFor(path=self.serve)
        proxy.waitFor(path=self.capture)
        cell = _Cell()
        names = sorted(dumpclient.images())

        def restore() -> None:
            try:
                r = criu.StreamRestorer(self.serve)
                cell.restored = r.fetchAll(names)
                r.close()
            except BaseException as e:
                cell.restored = e

        restorer = threading.Thread(target=restore, daemon=True)
        restorer.start()
        dumper = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.dumpclient", self.capture],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: dumper.poll() is None and dumper.kill())
        processes.update(proxy=lambda: proxy.process, cache=lambda: cache.process, dumper=lambda: dumper)
        cell.dumper = dumper.wait(BOUND)
        cell.proxy = proxy.wait(BOUND)
        cell.cache = cache.wait(BOUND)
        restorer.join(BOUND)
        self.assertFalse(restorer.is_alive(), "the restore never ended")
        self.assertTrue(relay.struck.is_set(), f"the link never reached {point}")
        self.logs = (proxy, cache)
        return cell

    def assertWhole(self, cell: _Cell) -> None:
        """
        The restore got every image, byte for byte.
        """
        self.assertEqual(cell.restored, dumpclient.images())

    def assertNoPartial(self, cell: _Cell) -> None:
        """
        The restore got whole images or none: each image it read is the
        one dumped, or it was answered as absent, or its socket failed.
        """
        if isinstance(cell.restored, BaseException):
            return
        assert cell.restored is not None
        images = dumpclient.images()
        for name, content in cell.restored.items():
            if content is not None:
                self.assertEqual(content, images[name], name)

    def assertFailed(self, daemon: Daemon, status: Optional[int]) -> None:
        """
        A daemon that lived on exited 1, saying why.
        """
        self.assertEqual(status, 1, daemon.log()[-2000:])
        self.assertIn("failed", daemon.log())


def _resetCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        cell = self.runCell(point, None)
        proxy, cache = self.logs
        self.assertEqual((cell.dumper, cell.proxy, cell.cache), (0, 0, 0), proxy.log()[-2000:] + cache.log()[-2000:])
        self.assertWhole(cell)

    test.__doc__ = f"""
        A reset of the link at {point} is resumed: the migration completes,
        byte for byte, and every process exits 0.
        """
    return test


def _killProxyCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        cell = self.runCell(point, "proxy")
        proxy, cache = self.logs
        self.assertEqual(cell.proxy, -signal.SIGKILL)
        if point == "final-handshake":
            # The dump had ended, and the cache had verified everything and
            # confirmed it: only the answer was lost with the proxy.
            self.assertEqual(cell.dumper, 0)
            self.assertEqual(cell.cache, 0, cache.log()[-2000:])
            self.assertWhole(cell)
        else:
            self.assertNotEqual(cell.dumper, 0)
            self.assertFailed(cache, cell.cache)
            self.assertNoPartial(cell)
            self.assertNotEqual(cell.restored, dumpclient.images())

    test.__doc__ = f"""
        The proxy killed at {point}: the dump fails; the cache gives the
        session up after its resume timeout and exits 1, and the restore
        gets no partial image (at the final handshake the dump had ended
        and the cache had confirmed every image: it serves them all and
        exits 0).
        """
    return test


def _killCacheCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        cell = self.runCell(point, "cache")
        proxy, cache = self.logs
        self.assertEqual(cell.cache, -signal.SIGKILL)
        self.assertFailed(proxy, cell.proxy)
        # At the final handshake the dump had ended already.
        self.assertEqual(cell.dumper == 0, point == "final-handshake")
        self.assertNotEqual(cell.restored, dumpclient.images())

    test.__doc__ = f"""
        The cache killed at {point}: the proxy gives the session up after
        its reconnect timeout and exits 1, the dump fails (unless it had
        ended), and the restore fails.
        """
    return test


def _killDumperCell(point: str) -> Callable[[FaultMatrixTests], None]:
    def test(self: FaultMatrixTests) -> None:
        cell = self.runCell(point, "dumper")
        proxy, cache = self.logs
        self.assertEqual(cell.dumper, -signal.SIGKILL)
        self.assertFailed(proxy, cell.proxy)
        self.assertFailed(cache, cell.cache)
        self.assertNoPartial(cell)
        self.assertNotEqual(cell.restored, dumpclient.images())

    test.__doc__ = f"""
        CRIU's dump killed at {point}: the dump stream ends without its
        inventory, both daemons give the session up and exit 1, and the
        restore gets no partial image.
        """
    return test


for _point in POINTS:
    _name = "".join(part.title() for part in _point.split("-"))
    setattr(FaultMatrixTests, f"test_reset{_name}", _resetCell(_point))
for _point in ("mid-chunk", "before-ack", "final-handshake"):
    _name = "".join(part.title() for part in _point.split("-"))
    setattr(FaultMatrixTests, f"test_killProxy{_name}", _killProxyCell(_point))
for _point in ("mid-hello", "mid-chunk", "before-ack", "final-handshake"):
    _name = "".join(part.title() for part in _point.split("-"))
    setattr(FaultMatrixTests, f"test_killCache{_name}", _killCacheCell(_point))
for _point in ("mid-chunk", "before-ack"):
    _name = "".join(part.title() for part in _point.split("-"))
    setattr(FaultMatrixTests, f"test_killDumper{_name}", _killDumperCell(_point))
