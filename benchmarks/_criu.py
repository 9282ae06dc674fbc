"""
Real-CRIU cases: a process's downtime, from the start of C{criu dump} to
the return of C{criu restore -d}, through imgrelay's daemons (C{--stream})
and through what a user would do without them (dump into a directory on
tmpfs, copy it with tar over one loopback TCP connection, restore from
the copy). Blocking; needs root and CRIU (L{unavailable}).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from subprocess import PIPE
from typing import Any, Callable, Optional, Sequence

import attrs

from benchmarks._content import warmMemory
from benchmarks._runner import BenchmarkError
from imgrelay.testing import realcriu
from imgrelay.testing.daemons import Daemon, freePort
from imgrelay.local.proctree import residentBytes
from imgrelay.testing.realcriu import Criu, CriuRun, Victim
from imgrelay.transport.localsock import CAPTURE_SOCKET, SERVE_SOCKET

#: The cases, as C{--scenario} names them (C{criu} means both).
KEYS = ("criu-m", "criu-h")

#: The systems a case runs through.
SYSTEMS = ("baseline", "imgrelay")

#: Where each run's directory goes: a tmpfs, so no disk is waited for.
TMPFS = "/dev/shm"

#: How long one C{criu} command or the copy may take, in seconds.
TIMEOUT = 300.0

#: tar's record size in the baseline's copy: 1 MiB (2048 blocks), as the
#: stream benchmarks' relays read. tar's default, 10 KiB, took about twice
#: as long here (1.1 s against 0.5 to 0.6 s for a 1 GiB image).
TAR_RECORDS = ("-b", "2048")

#: The heap victim's objects: about 400 MB resident (VmRSS 389 412 kB with
#: Python 3.11; 620 000 objects gave 401 808 kB).
HEAP_OBJECTS = 600_000

#: What the table measures, for its header.
HOW = """\
downtime: from the start of criu dump to the return of criu restore -d (CRIU logging at -v4, both systems)
  imgrelay: criu restore --stream waiting from the start; criu dump --stream -> imgrelay-proxy -> loopback TCP
            -> imgrelay-cache -> the restore (oneshot daemons started and ready beforehand, not timed)
  baseline: criu dump -D A; tar -C A -b 2048 -cf - . writing into one loopback TCP connection, tar -C B -b 2048
            -xf - reading from it (each tar on the socket itself, no relay, 1 MiB records); criu restore -D B
            (A and B on tmpfs)
  before each run: a fresh victim; 4 x its VmRSS of memory touched and freed (this VM's balloon, see README)"""


@attrs.frozen
class Case:
    """
    One victim to migrate: its key (as C{--scenario} takes it), what it
    is, its kind and options (L{imgrelay.testing.victim}).
    """

    key: str
    title: str
    kind: str
    args: tuple[str, ...]


@attrs.frozen
class CriuResult:
    """
    What one migration measured, in seconds from the start of C{criu dump}.

    @ivar downtime: Until C{criu restore -d} returned 0.
    @ivar dumpSeconds: Until C{criu dump} returned 0.
    @ivar copySeconds: (baseline only) The tar copy's own seconds.
    @ivar rss: The victim's VmRSS before the dump, bytes.
    @ivar imageBytes: (baseline only) The images' bytes.
    """

    case: str
    system: str
    run: int
    downtime: float
    dumpSeconds: float
    copySeconds: Optional[float]
    rss: int
    imageBytes: Optional[int]


def unavailable(systems: Sequence[str]) -> Optional[str]:
    """
    @return: Why the cases cannot run (L{realcriu.unavailable}, or no
        system of L{SYSTEMS} in C{systems}), or None.
    """
    if not any(s in SYSTEMS for s in systems):
        return f"--system names none of {','.join(SYSTEMS)}"
    reason = realcriu.unavailable()
    return None if reason is None else f"real CRIU cannot run here: {reason}"


def selectKeys(spec: Optional[str]) -> list[str]:
    """
    @param spec: C{--scenario}'s value; None for all.
    @return: The keys of L{KEYS} it names (C{criu} names both).
    """
    parts = {p.strip() for p in spec.split(",")} if spec else {"criu"}
    return [k for k in KEYS if k in parts or "criu" in parts]


def cases(keys: Sequence[str], scale: float) -> list[Case]:
    """
    @param scale: Multiplies the victims' sizes (C{--scale}).
    @return: The cases named by C{keys}.
    """
    mib = max(1, round(1024 * scale))
    objects = max(1000, round(HEAP_OBJECTS * scale))
    made = {
        "criu-m": Case("criu-m", f"memory victim, {mib} MiB of random bytes", "memory", ("--mib", str(mib))),
        "criu-h": Case("criu-h", f"heap victim, {objects} Python objects", "heap", ("--objects", str(objects))),
    }
    return [made[k] for k in keys]


def _directory(parent: str, name: str) -> str:
    """@return: A new directory, mode 0700 as the daemons want it."""
    path = os.path.join(parent, name)
    os.mkdir(path, 0o700)
    return path


def _started(stack: contextlib.ExitStack, run: CriuRun) -> CriuRun:
    """@return: C{run}, killed when C{stack} closes if it still runs."""
    stack.callback(run.stop)
    return run


def _exitTimes(runs: Sequence[CriuRun], timeout: float = TIMEOUT) -> list[float]:
    """
    Wait for every run to exit, watching their pidfds (no polling).

    @return: When each exited (C{time.monotonic()}).
    @raise BenchmarkError: At the first to exit nonzero, or when the time
        ran out.
    """
    pending = {os.pidfd_open(r.process.pid): i for i, r in enumerate(runs)}
    fds, stamps, deadline = list(pending), [0.0] * len(runs), time.monotonic() + timeout
    try:
        while pending:
            ready = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))[0]
            now = time.monotonic()
            if not ready:
                raise BenchmarkError(f"criu still runs after {timeout} s:\n{runs[min(pending.values())].errors()}")
            for fd in ready:
                i = pending.pop(fd)
                stamps[i] = now
                if runs[i].wait(1) != 0:
                    raise BenchmarkError(f"criu failed:\n{runs[i].errors()}")
    finally:
        for fd in fds:
            os.close(fd)
    return stamps


def copyOverTcp(source: str, target: str, timeout: float = TIMEOUT) -> None:
    """
    Copy directory C{source} into C{target} as one tar stream over one
    loopback TCP connection: C{tar -cf - .} writes straight into the
    connected socket, C{tar -xf -} reads straight from the accepted one
    (each tar's stdout or stdin is the socket; no relay), in L{TAR_RECORDS}.

    @raise BenchmarkError: If either tar fails.
    @raise subprocess.TimeoutExpired: If one still runs after C{timeout}.
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        sending = socket.create_connection(server.getsockname())
        receiving = server.accept()[0]
    with sending, receiving:
        untar = subprocess.Popen(["tar", "-C", target, *TAR_RECORDS, "-xf", "-"], stdin=receiving.fileno(), stderr=PIPE)
        tar = subprocess.Popen(["tar", "-C", source, *TAR_RECORDS, "-cf", "-", "."], stdout=sending.fileno(), stderr=PIPE)
    for process in (tar, untar):
        said = process.communicate(timeout=timeout)[1]
        if process.returncode != 0:
            raise BenchmarkError(f"{process.args!r} failed ({process.returncode}): {said.decode(errors='replace')}")


def _baseline(
    stack: contextlib.ExitStack, work: str, criu: Criu, victim: Victim, copy: Callable[[str, str], Any] = copyOverTcp,
) -> tuple[CriuRun, dict[str, Any]]:
    """
    Dump into tmpfs, copy with C{copy(source, target)} (L{copyOverTcp}),
    restore from the copy.

    @return: The restore, and the times C{t0}, C{dumped}, C{copied}, C{t1}
        and the C{imageBytes}.
    """
    dumped, copied = _directory(work, "A"), _directory(work, "B")
    t0 = time.monotonic()
    [dumpEnd] = _exitTimes([_started(stack, criu.dump(victim.pid, dumped))])
    copy(dumped, copied)
    copyEnd = time.monotonic()
    restore = _started(stack, criu.restore(copied))
    [t1] = _exitTimes([restore])
    size = sum(e.stat().st_size for e in os.scandir(copied) if e.is_file())
    return restore, {"t0": t0, "dumped": dumpEnd, "copied": copyEnd, "t1": t1, "imageBytes": size}


def _daemons(
    stack: contextlib.ExitStack, work: str, host: str = "127.0.0.1", prefixes: tuple[tuple[str, ...], ...] = ((), ()),
    proxyArgs: tuple[str, ...] = (),
) -> tuple[Daemon, Daemon, str, str]:
    """
    Start a oneshot cache and a oneshot proxy linked on TCP (loopback by
    default), and wait until their CRIU sockets listen.

    @param host: The cache's address (it listens there alone).
    @param prefixes: What runs the proxy's and the cache's twistd (e.g.
        C{ip netns exec NS}: L{Daemon}'s C{prefix}).
    @param proxyArgs: More options for the proxy.
    @return: The proxy, the cache, the dump's and the restore's directories.
    """
    dumpDir, restoreDir = _directory(work, "D"), _directory(work, "R")
    port = freePort()
    cache = Daemon("imgrelay-cache", ["--listen", f"tcp:{port}:interface={host}", "--images-dir", restoreDir, "--oneshot"],
                   os.path.join(work, "cache.log"), prefix=prefixes[1])
    stack.callback(cache.stop)
    cache.waitFor(path=os.path.join(restoreDir, SERVE_SOCKET))
    proxy = Daemon("imgrelay-proxy", ["--connect", f"tcp:host={host}:port={port}", "--images-dir", dumpDir, "--oneshot",
                                      *proxyArgs], os.path.join(work, "proxy.log"), prefix=prefixes[0])
    stack.callback(proxy.stop)
    proxy.waitFor(path=os.path.join(dumpDir, CAPTURE_SOCKET))
    return proxy, cache, dumpDir, restoreDir


def daemonLogs(*daemons: Daemon) -> str:
    """@return: The last 30 lines of each daemon's log, for a failure."""
    return "\n".join(f"--- {d.logPath}:\n" + "\n".join(d.log().splitlines()[-30:]) for d in daemons)


def _imgrelay(
    stack: contextlib.ExitStack, work: str, criu: Criu, victim: Victim, **daemons: Any,
) -> tuple[CriuRun, dict[str, Any]]:
    """
    Start the daemons (L{_daemons}, given C{daemons}, not timed), then the
    restore (it waits for the images), then the dump, both with
    C{--stream}; both daemons must exit 0.

    @return: The restore, and the times C{t0}, C{dumped}, C{t1}.
    """
    proxy, cache, dumpDir, restoreDir = _daemons(stack, work, **daemons)
    try:
        restore = _started(stack, criu.restore(restoreDir, "--stream"))
        t0 = time.monotonic()
        dumpEnd, t1 = _exitTimes([_started(stack, criu.dump(victim.pid, dumpDir, "--stream")), restore])
        for name, daemon in (("proxy", proxy), ("cache", cache)):
            if daemon.wait(30) != 0:
                raise BenchmarkError(f"the {name} exited with {daemon.process.returncode}")
    except (BenchmarkError, RuntimeError) as e:
        raise BenchmarkError(f"{e}\n{daemonLogs(proxy, cache)}") from None
    return restore, {"t0": t0, "dumped": dumpEnd, "t1": t1}


def _sweep(work: str) -> None:
    """Kill and reap any process still naming C{work} (victims, restored trees, tar)."""
    for pid, _ in realcriu.leftovers(work):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _check(restore: CriuRun, victim: Victim, before: dict[str, Any], stack: contextlib.ExitStack) -> None:
    """
    @raise BenchmarkError: Unless the restored tree (killed when C{stack}
        closes) reports C{ok} and the digest the source reported before.
    """
    tree = restore.restored(victim.directory)
    stack.callback(tree.kill)
    after = tree.report()
    if not after.get("ok") or after.get("digest") != before["digest"] or after.get("kind") != before["kind"]:
        raise BenchmarkError(f"the restored victim does not check out: {after} (before the dump: {before})")


#: How one system migrates: given the run's stack, directory, CRIU and
#: victim, it gives the restore and its times (L{_baseline}, L{_imgrelay}).
Migrate = Callable[[contextlib.ExitStack, str, Criu, Victim], tuple[CriuRun, dict[str, Any]]]


def runOnce(case: Case, system: str, run: int, migrate: Optional[Migrate] = None) -> CriuResult:
    """
    Migrate a fresh victim of C{case} through C{system}, in a fresh
    directory on tmpfs, removed afterwards with every process started in
    it, whatever happened.

    @param migrate: How (default: L{_baseline} or L{_imgrelay} as
        C{system} says).

    @raise BenchmarkError: If a step failed or the restored state differs.
    """
    work = tempfile.mkdtemp(prefix=f"imgrelay-bench-{case.key}-", dir=TMPFS)
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, work, True)
            stack.callback(_sweep, work)
            victim = Victim(case.kind, os.path.join(work, "victim"), *case.args)
            stack.callback(victim.stop)
            before = victim.report()
            if not before.get("ok"):
                raise BenchmarkError(f"the victim fails its own check before the dump: {before}")
            rss = residentBytes(victim.pid)
            warmMemory(4 * rss)
            if migrate is None:
                migrate = _baseline if system == "baseline" else _imgrelay
            restore, times = migrate(stack, work, Criu(work), victim)
            _check(restore, victim, before, stack)
    except (BenchmarkError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        raise BenchmarkError(f"{case.key} through {system}, run {run}: {e}") from e
    copied = times.get("copied")
    return CriuResult(
        case.key, system, run, times["t1"] - times["t0"], times["dumped"] - times["t0"],
        None if copied is None else copied - times["dumped"], rss, times.get("imageBytes"),
    )


def benchmark(chosen: Sequence[Case], systems: Sequence[str], runs: int, log: Callable[[str], None]) -> list[CriuResult]:
    """
    Run every case through every system of L{SYSTEMS} in C{systems}, C{runs}
    times, alternating which system goes first. This process becomes the
    subreaper of the restored trees, to reap them.
    """
    realcriu.becomeSubreaper()
    results = []
    through = [s for s in systems if s in SYSTEMS]
    for run in range(1, runs + 1):
        for case in chosen:
            for system in through if run % 2 else through[::-1]:
                r = runOnce(case, system, run)
                results.append(r)
                copy = f"  copy {r.copySeconds:6.3f} s" if r.copySeconds is not None else ""
                log(f"run {run}/{runs} {case.key:<8} {system:<9} downtime {r.downtime:7.3f} s  "
                    f"dump {r.dumpSeconds:6.3f} s{copy}  restored, verified")
    return results


def table(chosen: Sequence[Case], results: Sequence[CriuResult]) -> str:
    """
    @return: A line per case (the victim's VmRSS and the images' size,
        medians), then a row per case and system: downtime median, min,
        max; the dump's and (baseline) the copy's median seconds; the
        baseline's median downtime over this system's.
    """
    lines = []
    for case in chosen:
        rs = [r for r in results if r.case == case.key]
        sizes = [r.imageBytes for r in rs if r.imageBytes is not None]
        images = f", images {statistics.median(sizes) / 1e6:.0f} MB" if sizes else ""
        lines.append(f"  {case.key:<8} {case.title}: VmRSS {statistics.median(r.rss for r in rs) / 1e6:.0f} MB{images}")
    head = f"{'case':<8} {'system':<9} {'downtime s':>10} {'min':>7} {'max':>7} {'dump s':>7} {'copy s':>7} {'x base':>6}"
    lines += ["", head, f"{'':<18} {'median':>10}", "-" * len(head)]
    for case in chosen:
        base = [r.downtime for r in results if r.case == case.key and r.system == "baseline"]
        for system in ("imgrelay", "baseline"):
            rs = [r for r in results if r.case == case.key and r.system == system]
            if not rs:
                continue
            down = [r.downtime for r in rs]
            copies = [r.copySeconds for r in rs if r.copySeconds is not None]
            copy = f"{statistics.median(copies):7.3f}" if copies else f"{'-':>7}"
            ratio = f"{statistics.median(base) / statistics.median(down):6.2f}" if base else f"{'-':>6}"
            lines.append(
                f"{case.key:<8} {system:<9} {statistics.median(down):10.3f} {min(down):7.3f} {max(down):7.3f} "
                f"{statistics.median(r.dumpSeconds for r in rs):7.3f} {copy} {ratio}"
            )
    return "\n".join(lines)
