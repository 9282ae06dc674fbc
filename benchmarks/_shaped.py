"""
Does the proxy's C{--compress} pay on real (emulated) networks? The same
data through imgrelay with C{--compress auto}, C{zstd}, C{lz4}, C{none}, and
through the pipeline a user would otherwise build (C{tar | zstd -1 -T2}
over one TCP connection), across a link shaped to 1 Gbit/s or 10 Gbit/s
(L{benchmarks._netns}) and on loopback. Blocking; root only.

Cases (C{--scenario}): C{net-heap-criu}, a real CRIU migration of a
Python heap (downtime, as L{benchmarks._criu} measures it);
C{net-heap-pages}, a pages image cut from a real dump's and
C{net-random}, random bytes, each moved by the CRIU-like client
(L{imgrelay.testing.criu}). See C{benchmarks/README.md}.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from functools import partial
from typing import Any, Callable, Optional, Sequence

import attrs

from benchmarks import _criu, _netns
from benchmarks._clients import ClientTimes, CriuRestorer, runReader
from benchmarks._content import ImageSpec, ReceiveBuffer, layout, layoutSize, warmMemory
from benchmarks._runner import BenchmarkError, Gate, Worker, _clear
from imgrelay.testing import realcriu
from imgrelay.testing.criu import BLOCK, INVENTORY, StreamDumper
from imgrelay.transport.localsock import CAPTURE_SOCKET, SERVE_SOCKET

KEYS = ("net-heap-criu", "net-heap-pages", "net-random")
LINKS = ("1gbit", "10gbit", "loopback")
#: imgrelay's proxy with each C{--compress}, and the pipeline (C{tar|zstd}).
MODES = ("auto", "zstd", "lz4", "none")
PIPELINE = "tar|zstd"
#: Loopback runs these only (the cases without CRIU).
LOOPBACK = ("auto", "none")
HEAP_PAGES = "/work/shared/data/python-heap-pages.bin"
#: Each run moves the CRIU-like client's cases this many times over these
#: links, in alternating order: they take a third of a second, and two
#: runs of the same thing there differ by 10 to 20 % on this machine (on
#: loopback, 0.23 to 0.35 s), more than the 5 % the targets there are
#: judged by.
REPEATS = {"10gbit": 3, "loopback": 5}
PAGES_MIB = 256
INVENTORY_CONTENT = b"imgrelay shaped-link benchmark inventory\n" * 4
TIMEOUT = 300.0


@attrs.frozen
class NetResult:
    """
    One run: seconds from the start of the dump (C{net-heap-criu}) or of
    the first write to the restore's return or the last byte read;
    C{dumpSeconds} until the dump side was done; C{imageBytes} moved,
    C{linkBytes} on the link; C{cpu} cores busy on average meanwhile.
    """

    case: str
    link: str
    system: str
    run: int
    seconds: float
    dumpSeconds: float
    imageBytes: int
    linkBytes: int
    cpu: float


def selectKeys(spec: Optional[str]) -> list[str]:
    """@return: The keys of L{KEYS} C{spec} names (C{net}: all; None: all)."""
    parts = {p.strip() for p in spec.split(",")} if spec else {"net"}
    return [k for k in KEYS if k in parts or "net" in parts]


def unavailable(keys: Sequence[str], heapPages: str) -> dict[str, str]:
    """@return: Why each of C{keys} cannot run here, for those that cannot."""
    reason = _netns.unavailable()
    if reason is not None:
        return {k: reason for k in keys}
    out = {}
    if "net-heap-criu" in keys and (criu := realcriu.unavailable()) is not None:
        out["net-heap-criu"] = f"real CRIU cannot run here: {criu}"
    if "net-heap-pages" in keys and not os.path.isfile(heapPages):
        out["net-heap-pages"] = f"no heap pages at {heapPages} (--heap-pages PATH)"
    return out


def systems(link: str, chosen: Sequence[str]) -> list[str]:
    """@return: What runs over C{link}, of C{chosen}: modes and L{PIPELINE}."""
    return [s for s in chosen if link != "loopback" or s in LOOPBACK]


def images(key: str, heapPages: str, scale: float) -> dict[str, bytes]:
    """
    @return: C{pages-1.img} (heap pages repeated, or random bytes, to
        L{PAGES_MIB} MiB times C{scale}) and C{inventory.img}, in the
        order a dump writes them.
    """
    size = max(1, round(PAGES_MIB * scale)) << 20
    if key == "net-random":
        pages = os.urandom(size)
    else:
        with open(heapPages, "rb") as f:
            piece = f.read()
        pages = (piece * -(-size // len(piece)))[:size]
    return {"pages-1.img": pages, INVENTORY: INVENTORY_CONTENT}


class Received:
    """
    Where the restore side puts what it reads, as the main benchmarks'
    reader does (L{benchmarks._clients.runReader}) and as CRIU does: each
    image at its own place in memory faulted in before the timed part (a
    shared map, so that a forked reader's bytes are seen here), the same
    for imgrelay and for the pipeline's read-back.
    """

    def __init__(self, content: dict[str, bytes]) -> None:
        self.places = layout([ImageSpec(name, len(data), i) for i, (name, data) in enumerate(content.items())])
        self.buffer = ReceiveBuffer(layoutSize(self.places))
        self._expected = _digests(content)

    def clear(self) -> None:
        """Zero the places, so that nothing of an earlier run can pass."""
        _clear(self.buffer, self.places)

    def verify(self, received: dict[str, int]) -> None:
        """
        @param received: Each image's length as read (-1: it did not exist).
        @raise BenchmarkError: If any image's length or bytes differ.
        """
        found = {name: bytes(self.buffer.view[off:off + size]) if received.get(name) == size else None
                 for name, (off, size) in self.places.items()}
        got = {n: (received.get(n, -1), "") if d is None else (len(d), hashlib.blake2b(d).hexdigest()) for n, d in found.items()}
        if got != self._expected:
            raise BenchmarkError(f"read back {got}, written {self._expected}")


def _digests(content: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    return {n: (len(d), hashlib.blake2b(d).hexdigest()) for n, d in content.items()}


def _dump(capture: str, content: dict[str, bytes], who: int) -> ClientTimes:
    """The dump side (a forked process): every image through the proxy, C{inventory.img} last."""
    out = ClientTimes(start=time.monotonic())
    dumper = StreamDumper(capture)
    for name, data in content.items():
        if name == INVENTORY:
            dumper.finish(data)
        else:
            dumper.send(name, data)
    out.end = time.monotonic()
    return out


def _restore(serve: str, received: Received, gate: Gate, who: int) -> ClientTimes:
    """
    The restore side (a forked process), waiting from the start; asks as
    CRIU does, C{inventory.img} first, and reads each image into its place.
    """
    received.buffer.prefault(layoutSize(received.places))
    client = CriuRestorer(serve)
    gate.set()
    names = [INVENTORY, *(n for n in received.places if n != INVENTORY)]
    return runReader(client, tuple((n, True) for n in names), received.places, received.buffer.view, who)


def _stats(path: str) -> dict[str, Any]:
    """@return: The proxy's last C{--stats-file} record."""
    with open(path) as f:
        record: dict[str, Any] = json.loads(f.read().splitlines()[-1])
    return record


def _daemonOptions(link: _netns.Link, mode: str, statsPath: str) -> dict[str, Any]:
    return {"host": link.hostB, "prefixes": (link.prefix("A"), link.prefix("B")),
            "proxyArgs": ("--compress", mode, "--stats-file", statsPath)}


def _pagesImgrelay(link: _netns.Link, mode: str, content: dict[str, bytes], received: Received, work: str) -> dict[str, Any]:
    """Move C{content} through the daemons (not timed: their start) with the CRIU-like client."""
    statsPath = os.path.join(work, "proxy-stats.jsonl")
    with contextlib.ExitStack() as stack:
        proxy, cache, dumpDir, restoreDir = _criu._daemons(stack, work, **_daemonOptions(link, mode, statsPath))
        try:
            gate = Gate()
            stack.callback(gate.close)
            reader = Worker(partial(_restore, os.path.join(restoreDir, SERVE_SOCKET), received, gate), "process")
            stack.callback(reader.kill)
            gate.wait(30)
            writer = Worker(partial(_dump, os.path.join(dumpDir, CAPTURE_SOCKET), content), "process")
            stack.callback(writer.kill)

            def watch() -> None:
                for d in (proxy, cache):
                    if d.process.poll() not in (None, 0):
                        raise BenchmarkError(f"the {d.plugin} exited with {d.process.returncode}")

            w, r = writer.join(TIMEOUT, watch), reader.join(TIMEOUT, watch)
            for d in (proxy, cache):
                if d.wait(30) != 0:
                    raise BenchmarkError(f"the {d.plugin} exited with {d.process.returncode}")
        except (BenchmarkError, RuntimeError, TimeoutError) as e:
            raise BenchmarkError(f"{e}\n{_criu.daemonLogs(proxy, cache)}") from None
    received.verify(r.received)
    stats = _stats(statsPath)
    return {"t0": w.start, "dumped": w.end, "t1": r.end, "imageBytes": stats["bytes"], "linkBytes": stats["link_bytes"]}


def _pagesPipeline(link: _netns.Link, content: dict[str, bytes], received: Received, work: str) -> dict[str, Any]:
    """Write C{content} to tmpfs, copy it with L{_netns.pipeline}, read it back into place."""
    received.buffer.prefault(layoutSize(received.places))
    source, target = os.path.join(work, "A"), os.path.join(work, "B")
    os.mkdir(source, 0o700)
    os.mkdir(target, 0o700)
    t0 = time.monotonic()
    for name, data in content.items():
        with open(os.path.join(source, name), "wb") as f:
            f.write(data)
    dumped = time.monotonic()
    linkBytes = _netns.pipeline(link, source, target)
    lengths: dict[str, int] = {}
    for name in [INVENTORY, *(n for n in content if n != INVENTORY)]:
        off, size = received.places[name]
        fd = os.open(os.path.join(target, name), os.O_RDONLY)
        try:
            lengths[name] = _readInto(fd, received.buffer.view[off:off + size])
        finally:
            os.close(fd)
    t1 = time.monotonic()
    received.verify(lengths)
    return {"t0": t0, "dumped": dumped, "t1": t1, "imageBytes": sum(map(len, content.values())), "linkBytes": linkBytes}


def _readInto(fd: int, place: memoryview) -> int:
    """Read a file into its place, as the restore side reads a pipe: a block at a time."""
    n = 0
    while n < len(place):
        got = os.readv(fd, [place[n:n + BLOCK]])
        if not got:
            break
        n += got
    return n + len(os.read(fd, 1))  # one byte more than its place: too long


def _pagesOnce(link: _netns.Link, system: str, content: dict[str, bytes], received: Received) -> dict[str, Any]:
    """One run of C{net-heap-pages} or C{net-random} in a fresh tmpfs directory, removed after."""
    work = tempfile.mkdtemp(prefix="imgrelay-bench-net-", dir=_criu.TMPFS)
    try:
        received.clear()
        warmMemory(4 * sum(map(len, content.values())))
        if system == PIPELINE:
            return _pagesPipeline(link, content, received, work)
        return _pagesImgrelay(link, system, content, received, work)
    finally:
        shutil.rmtree(work, True)


def _criuOnce(link: _netns.Link, system: str, run: int, scale: float) -> dict[str, Any]:
    """One real-CRIU migration of a fresh heap victim (L{_criu.runOnce}), across C{link}."""
    objects = max(1000, round(_criu.HEAP_OBJECTS * scale))
    case = _criu.Case("net-heap-criu", f"heap victim, {objects} Python objects", "heap", ("--objects", str(objects)))
    seen: dict[str, Any] = {}

    def migrate(stack: contextlib.ExitStack, work: str, criu: realcriu.Criu, victim: realcriu.Victim) -> Any:
        if system == PIPELINE:
            copy = lambda a, b: seen.update(linkBytes=_netns.pipeline(link, a, b))  # noqa: E731
            restore, times = _criu._baseline(stack, work, criu, victim, copy)
        else:
            path = os.path.join(work, "proxy-stats.jsonl")
            restore, times = _criu._imgrelay(stack, work, criu, victim, **_daemonOptions(link, system, path))
            stats = _stats(path)
            seen.update(linkBytes=stats["link_bytes"], imageBytes=stats["bytes"])
        seen.update(times)
        return restore, times

    _criu.runOnce(case, f"{link.name} {system}", run, migrate)
    return seen


@contextlib.contextmanager
def _link(name: str) -> Any:
    if name == "loopback":
        yield _netns.Link("loopback")
    else:
        with _netns.shaped(name) as link:
            yield link


def benchmark(keys: Sequence[str], chosen: Sequence[str], runs: int, scale: float, heapPages: str,
              log: Callable[[str], None]) -> tuple[list[NetResult], dict[str, list[float]]]:
    """
    Every case of C{keys} over every link, C{runs} times; each run sets up
    each link afresh (measuring what it carries raw) and alternates which
    system goes first.

    @return: Every run's result, and each link's raw rates (bytes/s).
    """
    realcriu.becomeSubreaper()
    content = {k: images(k, heapPages, scale) for k in keys if k != "net-heap-criu"}
    places = {k: Received(c) for k, c in content.items()}
    results: list[NetResult] = []
    rates: dict[str, list[float]] = {}
    sampler = _netns.CpuSampler()
    try:
        for run in range(1, runs + 1):
            for name in LINKS:
                with _link(name) as link:
                    rates.setdefault(name, []).append(_netns.rawRate(link))
                    log(f"run {run}/{runs} {name}: raw TCP {rates[name][-1] / 1e6:.1f} MB/s")
                    for key in keys:
                        if name == "loopback" and key == "net-heap-criu":
                            continue
                        order = systems(name, chosen)
                        repeats = 1 if key == "net-heap-criu" else REPEATS.get(name, 1)
                        for system in [s for i in range(repeats) for s in (order if (run + i) % 2 else order[::-1])]:
                            try:
                                if key == "net-heap-criu":
                                    t = _criuOnce(link, system, run, scale)
                                else:
                                    t = _pagesOnce(link, system, content[key], places[key])
                            except (OSError, RuntimeError, TimeoutError) as e:
                                raise BenchmarkError(f"{key} over {name} through {system}, run {run}: {e}") from e
                            r = NetResult(key, name, system, run, t["t1"] - t["t0"], t["dumped"] - t["t0"],
                                          t["imageBytes"], t["linkBytes"], sampler.busy(t["t0"], t["t1"]))
                            results.append(r)
                            log(f"run {run}/{runs} {key:<14} {name:<8} {system:<8} {r.seconds:7.3f} s  "
                                f"link {r.linkBytes / 1e6:7.1f} MB  ratio {r.imageBytes / max(1, r.linkBytes):5.2f}  "
                                f"cpu {r.cpu:4.2f}  verified")
    finally:
        sampler.stop()
    return results, rates


HOW = f"""\
links: two network namespaces joined by a veth pair, both ends shaped with tbf (rate, burst as below, latency 50ms);
  loopback: no namespaces. imgrelay-proxy runs in A, imgrelay-cache in B (--oneshot, started and ready beforehand,
  not timed); the pipeline's TCP connection goes from A to B. Over 10gbit and loopback, net-heap-pages and
  net-random run 3 and 5 times per run, in alternating order (they take a third of a second, and vary by 10 to 40 %).
systems: auto, zstd, lz4, none = imgrelay with the proxy's --compress; {PIPELINE} = tar -C A -b 2048 -cf - . |
  zstd -1 -T2 into one TCP connection, zstd -d | tar -C B -b 2048 -xf - out of it (A, B on tmpfs)
net-heap-criu: downtime, from the start of criu dump to the return of criu restore -d (restore waiting with
  --stream; pipeline: criu dump -D A, the copy, criu restore -D B); the restored victim checks its digest
net-heap-pages, net-random: pages-1.img then inventory.img, from the first byte written (the CRIU-like writer; the
  pipeline: files written to tmpfs) to the last byte read (the reader asking inventory.img first; the pipeline: the
  files read back), each image read into its place in a map faulted in beforehand; every byte checked (BLAKE2b)
columns: link MB, the bytes on the link (imgrelay: the proxy's --stats-file link_bytes; pipeline: TCP_INFO's bytes
  received); ratio, image bytes / link bytes; x none, x pipe: none's, the pipeline's median over this one (above 1:
  faster); cpu, the machine's busy cores during the timed part (of {os.cpu_count()}, anything running counted)"""


def _median(rs: Sequence[NetResult], f: Callable[[NetResult], float]) -> float:
    return statistics.median(f(r) for r in rs)


def _of(results: Sequence[NetResult], case: str, link: str, system: str) -> list[NetResult]:
    return [r for r in results if r.case == case and r.link == link and r.system == system]


def table(results: Sequence[NetResult], rates: dict[str, list[float]], titles: dict[str, str]) -> str:
    """@return: The links' raw rates, the cases, and a row per case, link and system."""
    lines = []
    for name, measured in rates.items():
        shape = f"tbf rate {name} burst {_netns.BURSTS[name]}" if name in _netns.BURSTS else "no namespaces, no shaping"
        lines.append(f"  {name:<8} {shape}: raw TCP {statistics.median(measured) / 1e6:7.1f} MB/s median "
                     f"({min(measured) / 1e6:.1f} to {max(measured) / 1e6:.1f}, {len(measured)} x 2 s, "
                     "Python sendall/recv_into 1 MiB)")
    lines += [f"  {k}: {v}" for k, v in titles.items()]
    head = (f"{'case':<14} {'link':<8} {'system':<8} {'s median':>8} {'min':>7} {'max':>7} {'dump s':>7} "
            f"{'image MB':>8} {'link MB':>8} {'ratio':>6} {'x none':>6} {'x pipe':>6} {'cpu':>5}")
    lines += ["", head, "-" * len(head)]
    for case in KEYS:
        for link in LINKS:
            none, pipe = _of(results, case, link, "none"), _of(results, case, link, PIPELINE)
            for system in (*MODES, PIPELINE):
                rs = _of(results, case, link, system)
                if not rs:
                    continue
                secs = [r.seconds for r in rs]
                med = statistics.median(secs)
                xNone = f"{_median(none, lambda r: r.seconds) / med:6.2f}" if none else f"{'-':>6}"
                xPipe = f"{_median(pipe, lambda r: r.seconds) / med:6.2f}" if pipe else f"{'-':>6}"
                lines.append(
                    f"{case:<14} {link:<8} {system:<8} {med:8.3f} {min(secs):7.3f} {max(secs):7.3f} "
                    f"{_median(rs, lambda r: r.dumpSeconds):7.3f} {_median(rs, lambda r: r.imageBytes) / 1e6:8.1f} "
                    f"{_median(rs, lambda r: r.linkBytes) / 1e6:8.1f} "
                    f"{_median(rs, lambda r: r.imageBytes / max(1, r.linkBytes)):6.2f} {xNone} {xPipe} "
                    f"{_median(rs, lambda r: r.cpu):5.2f}")
            if any(r.case == case and r.link == link for r in results):
                lines.append("")
    return "\n".join(lines).rstrip()


def targets(results: Sequence[NetResult]) -> str:
    """@return: The issue's targets against the medians, as information."""
    def med(case: str, link: str, system: str) -> Optional[float]:
        rs = _of(results, case, link, system)
        return _median(rs, lambda r: r.seconds) if rs else None

    lines = []
    for case in ("net-heap-criu", "net-heap-pages"):
        auto, none, pipe = (med(case, "1gbit", s) for s in ("auto", "none", PIPELINE))
        if auto and none:
            lines.append(f"  1gbit {case}: auto {auto:.3f} s, none {none:.3f} s: {none / auto:.2f}x less time "
                         f"(target >= 3x): {'met' if none >= 3 * auto else 'NOT met'}")
        if auto and pipe:
            lines.append(f"  1gbit {case}: auto {auto:.3f} s against {PIPELINE} {pipe:.3f} s "
                         f"(target: less): {'met' if auto < pipe else 'NOT met'}")
    for case in KEYS:
        for link in LINKS:
            if link == "1gbit" and case != "net-random":
                continue
            auto, none = med(case, link, "auto"), med(case, link, "none")
            if auto and none:
                lines.append(f"  {link} {case}: auto {auto:.3f} s, none {none:.3f} s: {100 * (auto / none - 1):+.1f} % "
                             f"(target: within 5 % of none or better): {'met' if auto <= 1.05 * none else 'NOT met'}")
    return "\n".join(lines)
