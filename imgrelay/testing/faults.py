# -*- test-case-name: tests.e2e.test_faults -*-
"""
One migration through the real daemons with one fault at a chosen point of
the link (L{migrate}), for the fault matrix of L{tests.e2e.test_faults} and
the soak (C{python -m benchmarks.soak}). Blocking: run it from a thread or
a plain script.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Union

import attrs

from imgrelay.testing import criu, dumpclient
from imgrelay.testing.daemons import Daemon, freePort
from imgrelay.testing.faultrelay import POINTS, FaultRelay


#: The faults: the link reset, the link silently dead (it forwards nothing
#: more and is never closed), the link closed on the proxy's side only (the
#: cache's side left open, never told), or a process killed with SIGKILL.
FAULTS = ("reset", "blackhole", "half-open", "kill-proxy", "kill-cache", "kill-dumper")

#: Every (point, fault) pair but the proxy killed before the cache had its
#: hello: the cache never heard of that migration, and goes on waiting for
#: one, as a server does.
CELLS = tuple(
    (point, fault)
    for point in POINTS
    if point != "after-verdict"  # a plain proxy has no verdict link
    for fault in FAULTS
    if not (fault == "kill-proxy" and point in ("before-hello", "mid-hello"))
)


@attrs.define
class Outcome:
    """
    How one faulted migration ended.

    @ivar point: Where the fault struck (one of L{POINTS}).
    @ivar fault: What it was (one of L{FAULTS}).
    @ivar struck: Whether the link reached the point.
    @ivar proxy: The proxy's exit status; None if it had not exited
        within the bound.
    @ivar cache: The cache's, likewise.
    @ivar dumper: CRIU's dump's, likewise.
    @ivar restored: What the restore read (each image's content, None for
        an image answered as absent), the error that ended it, or None if
        it had not ended within the bound.
    @ivar logs: The proxy's and the cache's logs.
    @ivar seconds: How long the migration took, fault and all.
    """

    point: str
    fault: str
    struck: bool = False
    proxy: Optional[int] = None
    cache: Optional[int] = None
    dumper: Optional[int] = None
    restored: Union[dict[str, Optional[bytes]], BaseException, None] = None
    logs: tuple[str, str] = ("", "")
    seconds: float = 0.0

    @property
    def victim(self) -> Optional[str]:
        """
        The process the fault killed (C{"proxy"}, C{"cache"} or
        C{"dumper"}), or None.
        """
        return self.fault[len("kill-"):] if self.fault.startswith("kill-") else None

    @property
    def hung(self) -> bool:
        """
        Whether a process or the restore had not ended within the bound.
        """
        return None in (self.proxy, self.cache, self.dumper) or self.restored is None

    @property
    def restoredWhole(self) -> bool:
        """
        Whether the restore read every image, byte for byte.
        """
        return self.restored == dumpclient.images()

    @property
    def complete(self) -> bool:
        """
        Whether the migration completed: the restore read every image byte
        for byte and the daemons exited 0.
        """
        return self.proxy == 0 and self.cache == 0 and self.restoredWhole

    def restoreSummary(self) -> str:
        """
        @return: What the restore read, in a line (never the bytes).
        """
        if self.restored is None:
            return "the restore did not end"
        if isinstance(self.restored, BaseException):
            return f"the restore failed: {self.restored!r}"
        images = dumpclient.images()
        absent = sorted(name for name, content in self.restored.items() if content is None)
        wrong = sorted(
            name for name, content in self.restored.items() if content is not None and content != images[name]
        )
        return f"{len(self.restored) - len(absent) - len(wrong)} whole, absent: {absent}, wrong: {wrong}"

    @property
    def wrongBytes(self) -> bool:
        """
        Whether the restore read an image that is not the one dumped (a
        short one counts) while the cache lived on: what must never happen.
        """
        if not isinstance(self.restored, dict) or self.victim == "cache":
            return False
        images = dumpclient.images()
        return any(content is not None and content != images[name] for name, content in self.restored.items())


def migrate(
    base: str, point: str, fault: str, bound: float = 60, giveUp: float = 3, heartbeat: float = 0.5,
    idle: float = 1.5,
) -> Outcome:
    """
    Migrate L{dumpclient.images} through C{twistd imgrelay-proxy --oneshot}
    and C{twistd imgrelay-cache --oneshot}, joined by a L{FaultRelay} that
    strikes at C{point} with C{fault}: it resets the link, holds it
    silently open forwarding nothing, or kills a process with SIGKILL. A
    restore reads every image meanwhile.

    @param base: An empty directory for the images directories and logs.
    @param giveUp: The daemons' C{--resume-timeout} and
        C{--reconnect-timeout}, in seconds.
    @param idle: The daemons' C{--idle-timeout}, in seconds: under
        C{giveUp}, so that a hello lost to a dead link is tried again in
        time.
    @param heartbeat: The cache's C{--heartbeat}, in seconds.
    @param bound: Seconds each process may take to end.
    @return: How it ended. Nothing of it runs any more.
    """
    began = time.monotonic()
    dumpDir, restoreDir = os.path.join(base, "dump"), os.path.join(base, "restore")
    os.mkdir(dumpDir, 0o700)
    os.mkdir(restoreDir, 0o700)
    capture = os.path.join(dumpDir, "streamer-capture.sock")
    serve = os.path.join(restoreDir, "streamer-serve.sock")
    port = freePort()
    assert fault in FAULTS, fault
    outcome = Outcome(point, fault)
    victim = outcome.victim
    processes: dict[str, subprocess.Popen[bytes]] = {}
    started = threading.Event()

    def strike() -> None:
        # The relay's thread may strike as soon as the dump connects: wait
        # until every process is known.
        started.wait(bound)
        process = processes.get(victim) if victim is not None else None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)

    relay = FaultRelay(
        port, point, strike if victim is not None else None, blackhole=fault == "blackhole",
        halfOpen=fault == "half-open",
    )
    cache = Daemon(
        "imgrelay-cache",
        ["--listen", f"tcp:{port}:interface=127.0.0.1", "--images-dir", restoreDir, "--oneshot",
         "--resume-timeout", str(giveUp), "--heartbeat", str(heartbeat), "--idle-timeout", str(idle)],
        os.path.join(base, "cache.log"),
    )
    proxy = Daemon(
        "imgrelay-proxy",
        ["--connect", f"tcp:host=127.0.0.1:port={relay.port}", "--images-dir", dumpDir, "--oneshot",
         "--reconnect-timeout", str(giveUp), "--idle-timeout", str(idle)],
        os.path.join(base, "proxy.log"),
    )
    dumper: Optional[subprocess.Popen[bytes]] = None
    try:
        cache.waitFor(path=serve)
        proxy.waitFor(path=capture)

        def restore() -> None:
            try:
                restorer = criu.StreamRestorer(serve)
                outcome.restored = restorer.fetchAll(sorted(dumpclient.images()))
                restorer.close()
            except BaseException as e:
                outcome.restored = e

        restorer = threading.Thread(target=restore, daemon=True)
        restorer.start()
        dumper = subprocess.Popen(
            [sys.executable, "-m", "imgrelay.testing.dumpclient", capture],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        processes.update(proxy=proxy.process, cache=cache.process, dumper=dumper)
        started.set()
        deadline = time.monotonic() + bound

        def wait(process: subprocess.Popen[bytes]) -> Optional[int]:
            try:
                return process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return None

        outcome.dumper = wait(dumper)
        outcome.proxy = wait(proxy.process)
        outcome.cache = wait(cache.process)
        restorer.join(max(0.0, deadline - time.monotonic()))
        if restorer.is_alive():
            outcome.restored = None
    finally:
        outcome.struck = relay.struck.is_set()
        for daemon in (proxy, cache):
            if daemon.process.poll() is None:
                daemon.process.kill()
            daemon.stop()
        if dumper is not None and dumper.poll() is None:
            dumper.kill()
            dumper.wait()
        relay.stop()
        outcome.logs = (proxy.log(), cache.log())
        if relay.error is not None:
            raise RuntimeError("the fault relay failed") from relay.error
        outcome.seconds = time.monotonic() - began
    return outcome
