"""
One measured run of one scenario through one system (imgrelay's daemons or
the baseline chain): start the processes, play the dump and the restore,
reap, verify every byte.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import select
import shutil
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Optional

import attrs

from benchmarks import _perf, _profile
from benchmarks._clients import (
    ClientTimes, CriuDumper, CriuRestorer, DumpClient, PlainDumper, PlainRestorer, RestoreClient, runReader, runWriter,
)
from benchmarks._content import ReceiveBuffer, Source, digests, layout, layoutSize, warmMemory
from benchmarks._procs import MeasuredProcess, ProcStats, relay
from benchmarks._scenarios import Scenario
from imgrelay.testing.daemons import freePort

#: A run is declared hung when it moves less than this (bytes/s), after a
#: minute's grace; a daemon's traceback or failure ends it at once.
MIN_RATE = 10e6

#: How long the reader waits for the dump to finish, in "after" scenarios.
RUN_TIMEOUT = 600.0


class BenchmarkError(Exception):
    """A run failed: a process failed, or bytes were lost or altered."""


@attrs.frozen
class RunResult:
    """
    What one run measured.

    @ivar system: C{"imgrelay"}, C{"baseline"} or C{"naive"} (the baseline storing in bytearrays).
    @ivar seconds: From the writer's first byte to the reader's last.
    @ivar dumpSeconds: From the writer's first byte to the dump side's exit
        (the proxy's, once the cache confirmed the session).
    @ivar dumpSide: The proxy (or relay A).
    @ivar restoreSide: The cache (or relay B).
    """

    scenario: str
    system: str
    bytes: int
    files: int
    seconds: float
    dumpSeconds: float
    dumpSide: ProcStats
    restoreSide: ProcStats
    writer: ClientTimes
    reader: ClientTimes


class Gate:
    """A one-shot signal between processes or threads: a pipe."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()

    def set(self) -> None:
        """Open the gate."""
        os.write(self._w, b"x")

    def wait(self, timeout: float) -> None:
        """@raise TimeoutError: If it did not open in time."""
        if not select.select([self._r], [], [], timeout)[0]:
            raise TimeoutError(f"gate not opened after {timeout} s")

    def close(self) -> None:
        """Free its pipe."""
        os.close(self._r)
        os.close(self._w)


class Worker:
    """
    A writer or reader running in a forked process or in a thread.

    A process has its own interpreter and GIL; its result comes back
    pickled through a pipe. A thread shares the parent's GIL.
    """

    def __init__(self, fn: Callable[[int], ClientTimes], mode: str) -> None:
        """
        @param fn: Runs the client; takes C{RUSAGE_SELF} or C{RUSAGE_THREAD}.
        @param mode: C{"process"} or C{"thread"}.
        """
        self._result: Optional[ClientTimes] = None
        self._pid = 0
        if mode == "thread":
            self._thread = threading.Thread(target=self._inThread, args=(fn,), daemon=True)
            self._thread.start()
            return
        self._r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(self._r)
            try:
                out = self._call(fn, resource.RUSAGE_SELF)
                data = pickle.dumps(out)
                with os.fdopen(w, "wb") as f:
                    f.write(data)
            finally:
                os._exit(0)
        os.close(w)
        self._pid = pid

    @staticmethod
    def _call(fn: Callable[[int], ClientTimes], who: int) -> ClientTimes:
        try:
            return fn(who)
        except BaseException:
            return ClientTimes(error=traceback.format_exc())

    def _inThread(self, fn: Callable[[int], ClientTimes]) -> None:
        self._result = self._call(fn, resource.RUSAGE_THREAD)

    def join(self, timeout: float, watch: Callable[[], None] = lambda: None) -> ClientTimes:
        """
        @param timeout: The longest it may still take.
        @param watch: Called about every 0.2 s while waiting; raises to give up.
        @return: What the client reported.
        @raise BenchmarkError: If it failed or hung.
        """
        deadline = time.monotonic() + timeout
        while not self._done(0.2):
            watch()
            if time.monotonic() > deadline:
                raise BenchmarkError(f"client hung for {timeout:.0f} s")
        if self._pid:
            with os.fdopen(self._r, "rb") as f:
                data = f.read()
            os.waitpid(self._pid, 0)
            self._pid = 0
            result: ClientTimes = pickle.loads(data) if data else ClientTimes(error="client process died")
        else:
            assert self._result is not None
            result = self._result
        if result.error:
            raise BenchmarkError("client failed:\n" + result.error)
        return result

    def _done(self, wait: float) -> bool:
        if self._pid:
            return bool(select.select([self._r], [], [], wait)[0])
        self._thread.join(wait)
        return not self._thread.is_alive()

    def kill(self) -> None:
        """Stop a process still running (after a failure elsewhere)."""
        if self._pid:
            try:
                os.kill(self._pid, 9)
                os.waitpid(self._pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(self._r)
            self._pid = 0


@attrs.define
class Processes:
    """The two processes under test and where the clients connect."""

    dumpSide: MeasuredProcess
    restoreSide: MeasuredProcess
    capture: str
    serve: str
    dumpClient: Callable[[str], DumpClient]
    restoreClient: Callable[[str], RestoreClient]


def startImgrelay(base: str) -> Processes:
    """
    Start C{twistd imgrelay-cache} and C{twistd imgrelay-proxy}, C{--oneshot},
    on 127.0.0.1, with fresh directories under C{base}.
    """
    dumpDir, restoreDir = os.path.join(base, "dump"), os.path.join(base, "restore")
    os.mkdir(dumpDir, 0o700)
    os.mkdir(restoreDir, 0o700)
    port = freePort()
    cache = MeasuredProcess.daemon(
        "imgrelay-cache",
        ["--listen", f"tcp:{port}:interface=127.0.0.1", "--images-dir", restoreDir, "--oneshot"],
        os.path.join(base, "cache.log"),
    )
    serve = os.path.join(restoreDir, "streamer-serve.sock")
    cache.waitFor(path=serve)
    proxy = MeasuredProcess.daemon(
        "imgrelay-proxy",
        ["--connect", f"tcp:host=127.0.0.1:port={port}", "--images-dir", dumpDir, "--oneshot"],
        os.path.join(base, "proxy.log"),
    )
    capture = os.path.join(dumpDir, "streamer-capture.sock")
    try:
        proxy.waitFor(path=capture)
    except BaseException:
        cache.stop()
        raise
    return Processes(proxy, cache, capture, serve, CriuDumper, CriuRestorer)


def startBaseline(base: str, store: str = "populate") -> Processes:
    """
    Start the baseline's relays B and A (L{benchmarks._relay}).

    @param store: How B takes memory: C{"populate"} or C{"bytearray"}.
    """
    port = freePort()
    capture, serve = os.path.join(base, "a.sock"), os.path.join(base, "b.sock")
    b = relay("b", ["--local", serve, "--port", str(port), "--store", store], os.path.join(base, "b.log"))
    b.waitFor(path=serve)
    a = relay("a", ["--local", capture, "--port", str(port)], os.path.join(base, "a.log"))
    try:
        a.waitFor(path=capture)
    except BaseException:
        b.stop()
        raise
    return Processes(a, b, capture, serve, PlainDumper, PlainRestorer)


SYSTEMS: dict[str, Callable[[str], Processes]] = {
    "baseline": startBaseline,
    "imgrelay": startImgrelay,
    "naive": lambda base: startBaseline(base, "bytearray"),
}


def runOnce(
    system: str, scenario: Scenario, source: Source, buffer: ReceiveBuffer, expected: dict[str, bytes], clients: str,
    profile: Optional[str] = None,
    perfPrefix: Optional[str] = None,
) -> RunResult:
    """
    Run one scenario once through one system, and verify it.

    @param system: A key of L{SYSTEMS}.
    @param expected: The digest of every image (L{benchmarks._content.expectedDigests}).
    @param clients: C{"process"} or C{"thread"}: how writer and reader run.
    @param profile: A path prefix: record both processes with py-spy into
        C{PREFIX-dump.txt} and C{PREFIX-restore.txt}.
    @param perfPrefix: A path prefix: record both processes with perf into
        C{PREFIX-dump.perf} and C{PREFIX-restore.perf}, and the start of the
        measured part and the GiB moved into C{PREFIX.json}.
    @raise BenchmarkError: If anything failed or any byte differs.
    """
    base = tempfile.mkdtemp(prefix=f"imgrelay-bench-{system}-")
    places = layout(scenario.images)
    _clear(buffer, places)
    images = {spec.name: spec for spec in scenario.images}
    procs = SYSTEMS[system](base)
    workers: list[Worker] = []
    go, ready = Gate(), Gate()
    ok = False
    recorders = []
    try:
        if profile is not None:
            recorders = [
                _profile.attach(procs.dumpSide.pid, f"{profile}-dump.txt"),
                _profile.attach(procs.restoreSide.pid, f"{profile}-restore.txt"),
            ]
        if perfPrefix is not None:
            recorders += [
                _perf.attach(procs.dumpSide.pid, f"{perfPrefix}-dump.perf"),
                _perf.attach(procs.restoreSide.pid, f"{perfPrefix}-restore.perf"),
            ]
        if recorders:
            time.sleep(0.5)  # let the recorders attach
        def read(who: int) -> ClientTimes:
            buffer.prefault(layoutSize(places))
            started: Optional[float] = None
            if not scenario.overlap:
                go.wait(RUN_TIMEOUT)
                started = time.monotonic()
            client = procs.restoreClient(procs.serve)
            if scenario.overlap:
                ready.set()
            return runReader(client, scenario.restore, places, buffer.view, who, started)

        warmMemory(scenario.totalBytes * 3 // 2 + (256 << 20))
        reader = Worker(read, clients)
        workers.append(reader)
        if scenario.overlap:
            ready.wait(60)
            time.sleep(0.05)  # let the first request reach the restore side
        procs.dumpSide.markStart()
        procs.restoreSide.markStart()
        if perfPrefix is not None:
            with open(f"{perfPrefix}.json", "w") as f:
                json.dump({"since": time.monotonic(), "gib": scenario.totalBytes / 2**30}, f)
        writer = Worker(lambda who: runWriter(procs.dumpClient(procs.capture), source, images, scenario.dump, who), clients)
        workers.append(writer)
        timeout = 60 + scenario.totalBytes / MIN_RATE

        def watch() -> None:
            procs.dumpSide.check()
            procs.restoreSide.check()

        w = writer.join(timeout, watch)
        dumpStats = procs.dumpSide.reap(timeout)
        if not scenario.overlap:
            go.set()
        r = reader.join(timeout, procs.restoreSide.check)
        restoreStats = procs.restoreSide.reap(60)
        for name, stats in (("dump side", dumpStats), ("restore side", restoreStats)):
            if stats.status != 0:
                raise BenchmarkError(f"{system} {name} exited with {stats.status}")
        _verify(system, scenario, r, places, buffer, expected)
        ok = True
        return RunResult(
            scenario.key, system, scenario.totalBytes, len(scenario.images), r.end - w.start,
            dumpStats.exited - w.start, dumpStats, restoreStats, w, r,
        )
    except BaseException as e:
        logs = "\n".join(f"--- {p.logPath}\n{p.log()}" for p in (procs.dumpSide, procs.restoreSide))
        raise BenchmarkError(f"{system}, scenario {scenario.key}: {e}\n{logs}") from e
    finally:
        for worker in workers:
            worker.kill()
        for recorder in recorders:
            try:
                recorder.wait(30)
            except Exception:
                recorder.kill()
                recorder.wait()
        procs.dumpSide.stop()
        procs.restoreSide.stop()
        go.close()
        ready.close()
        if ok:
            shutil.rmtree(base, ignore_errors=True)


def _clear(buffer: ReceiveBuffer, places: dict[str, tuple[int, int]]) -> None:
    """Zero the part of the buffer a run uses, so nothing stale can pass."""
    end = max((off + size for off, size in places.values()), default=0)
    zeros = bytes(64 << 20)
    for lo in range(0, end, len(zeros)):
        n = min(len(zeros), end - lo)
        buffer.view[lo : lo + n] = zeros[:n]


def _verify(system: str, scenario: Scenario, reader: ClientTimes, places: dict[str, tuple[int, int]], buffer: ReceiveBuffer, expected: dict[str, bytes]) -> None:
    """
    Check every request's answer, every image's length and digest.

    @raise BenchmarkError: Naming every image that is wrong.
    """
    wrong: list[str] = []
    for name, exists in scenario.restore:
        got = reader.received.get(name)
        want = places[name][1] if exists else -1
        if got != want:
            wrong.append(f"{name}: {got} bytes (-1: absent, None: never answered), expected {want}")
    if wrong:
        raise BenchmarkError(f"{system}: {len(wrong)} images wrong, e.g.\n  " + "\n  ".join(wrong[:10]))
    arrived = digests(
        {name: size for name, (_, size) in places.items()},
        lambda name, lo, hi: [buffer.view[places[name][0] + lo : places[name][0] + hi]],
    )
    bad = sorted(name for name in expected if arrived.get(name) != expected[name])
    if bad:
        raise BenchmarkError(f"{system}: {len(bad)} images arrived with the right length but altered bytes: {bad[:10]}")


def asDict(result: RunResult) -> dict[str, Any]:
    """@return: A run's measures, for C{--json}."""
    return attrs.asdict(result)
