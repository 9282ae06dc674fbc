"""
An emulated network link for the shaped benchmarks (L{benchmarks._shaped}):
two network namespaces joined by a veth pair, each end shaped with C{tc
tbf}; what the raw link carries; and the pipeline a user would build
without imgrelay (C{tar | zstd} over one TCP connection across the link).
Blocking; root only.

The TCP sockets of this module are made inside the namespaces by this
process itself (C{setns(2)} on its own thread, and back), then handed to
the processes that use them as their stdin or stdout: a socket belongs to
the namespace it was made in, whichever process reads or writes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from typing import Iterator, Optional

import attrs

#: The tbf burst for each rate C{--scenario net} uses. 1gbit: as measured
#: in docs (117.7 MB/s). 10gbit: 256kb, 1mb and 4mb all carried 1.13 to
#: 1.19 GB/s with Python at both ends (once 1.01 GB/s with 1mb); 1mb is
#: ample for a 64 KiB GSO packet at 10 Gbit/s.
BURSTS = {"1gbit": "256kb", "10gbit": "1mb"}

#: The two ends' addresses.
ADDRESS_A, ADDRESS_B = "10.213.0.1", "10.213.0.2"

#: The namespaces' and veth ends' name prefix (a veth name has at most 15
#: characters: C{irb-a-} and a pid).
PREFIX = "imgrelay-bench"

_CLONE_NEWNET = 0x40000000
_SOL_TCP, _TCP_INFO = 6, 11
#: C{struct tcp_info}'s C{tcpi_bytes_received} (Linux 4.1 and later).
_BYTES_RECEIVED = 128


@attrs.frozen
class Link:
    """
    Where the daemons and the pipeline run: two namespaces or this one.

    @ivar name: C{"1gbit"}, C{"10gbit"} or C{"loopback"}.
    @ivar nsA: The dump side's namespace (None: this one, on loopback).
    @ivar nsB: The restore side's namespace.
    @ivar hostB: The restore side's address.
    """

    name: str
    nsA: Optional[str] = None
    nsB: Optional[str] = None
    hostB: str = "127.0.0.1"

    def prefix(self, side: str) -> tuple[str, ...]:
        """@return: The command that runs a program on C{side} (C{"A"} or C{"B"})."""
        ns = self.nsA if side == "A" else self.nsB
        return () if ns is None else ("ip", "netns", "exec", ns)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


@contextlib.contextmanager
def shaped(rate: str, burst: Optional[str] = None) -> Iterator[Link]:
    """
    Two namespaces C{PREFIX-a-PID} and C{PREFIX-b-PID} joined by a veth
    pair (L{ADDRESS_A}/24, L{ADDRESS_B}/24), both ends up and shaped with
    C{tc qdisc add dev DEV root tbf rate RATE burst BURST latency 50ms};
    removed on the way out whatever happened (the veth dies with them).

    @param burst: The tbf burst (default L{BURSTS}'s, else 256kb).
    """
    pid = os.getpid()
    nsA, nsB, devA, devB = f"{PREFIX}-a-{pid}", f"{PREFIX}-b-{pid}", f"irb-a-{pid}", f"irb-b-{pid}"
    burst = burst or BURSTS.get(rate, "256kb")
    made: list[str] = []
    try:
        for ns in (nsA, nsB):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", devA, "netns", nsA, "type", "veth", "peer", "name", devB, "netns", nsB)
        for ns, dev, address in ((nsA, devA, ADDRESS_A), (nsB, devB, ADDRESS_B)):
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", burst,
                "latency", "50ms")
        yield Link(rate, nsA, nsB, ADDRESS_B)
    finally:
        for ns in made:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _ip("netns", "del", ns)


def unavailable() -> Optional[str]:
    """
    @return: Why no shaped link can be made here (not root, no C{ip} or
        C{tc}, or making one failed), or None.
    """
    if os.geteuid() != 0:
        return "network namespaces and tc need root, and this run is not root"
    missing = [t for t in ("ip", "tc", "tar", "zstd") if shutil.which(t) is None]
    if missing:
        return f"not on PATH: {', '.join(missing)}"
    try:
        with shaped("1gbit") as link, inNamespace(link.nsB):
            pass
    except (OSError, subprocess.SubprocessError) as e:
        return f"a shaped link could not be made: {e}"
    return None


@contextlib.contextmanager
def inNamespace(ns: Optional[str]) -> Iterator[None]:
    """
    Run this thread in network namespace C{ns} (None: stay) while inside,
    to make sockets there.
    """
    if ns is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if libc.setns(home, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(home)


def connection(link: Link) -> tuple[socket.socket, socket.socket]:
    """
    @return: One TCP connection across C{link}: its end in A (connected)
        and its end in B (accepted).
    """
    with inNamespace(link.nsB):
        server = socket.create_server((link.hostB, 0))
    with server, inNamespace(link.nsA):
        sending = socket.create_connection(server.getsockname(), 10)
        receiving = server.accept()[0]
    sending.settimeout(None)
    return sending, receiving


def receivedBytes(sock: socket.socket) -> int:
    """@return: The bytes C{sock} received (C{TCP_INFO}'s C{tcpi_bytes_received})."""
    info = sock.getsockopt(_SOL_TCP, _TCP_INFO, 256)
    return int(struct.unpack_from("<Q", info, _BYTES_RECEIVED)[0]) if len(info) >= _BYTES_RECEIVED + 8 else -1


def rawRate(link: Link, seconds: float = 2.0) -> float:
    """
    What C{link} carries: a forked child sends 1 MiB C{sendall}s on one
    connection for C{seconds}; this process receives with C{recv_into}.

    @return: Bytes per second received, from the first byte to the end.
    """
    sending, receiving = connection(link)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            receiving.close()
            block, deadline = bytes(1 << 20), time.monotonic() + seconds
            while time.monotonic() < deadline:
                sending.sendall(block)
            sending.close()
        finally:
            os._exit(0)
    sending.close()
    try:
        buffer, total, first = bytearray(1 << 20), 0, None
        with receiving:
            while n := receiving.recv_into(buffer):
                first = first or time.monotonic()
                total += n
        end = time.monotonic()
    finally:
        os.waitpid(pid, 0)
    return total / (end - first) if first and end > first else 0.0


#: tar's record size (as L{benchmarks._criu}) and the compressor's options.
TAR_RECORDS = ("-b", "2048")
ZSTD = ("zstd", "-1", "-T2", "-q", "-c")


def pipeline(link: Link, source: str, target: str, timeout: float = 300.0) -> int:
    """
    Copy directory C{source} into C{target} across C{link} as a user would
    without imgrelay: C{tar -C source -cf - . | zstd -1 -T2} writing into
    one TCP connection from A, C{zstd -d | tar -C target -xf -} reading it
    in B.

    @return: The bytes the connection carried.
    @raise OSError: If a stage failed.
    @raise subprocess.TimeoutExpired: If one still runs after C{timeout}.
    """
    sending, receiving = connection(link)
    PIPE, procs = subprocess.PIPE, []
    with sending, receiving:
        try:
            unzstd = subprocess.Popen(["zstd", "-d", "-q", "-c"], stdin=receiving.fileno(), stdout=PIPE, stderr=PIPE)
            procs.append(unzstd)
            procs.append(subprocess.Popen(["tar", "-C", target, *TAR_RECORDS, "-xf", "-"], stdin=unzstd.stdout, stderr=PIPE))
            tar = subprocess.Popen(["tar", "-C", source, *TAR_RECORDS, "-cf", "-", "."], stdout=PIPE, stderr=PIPE)
            procs.append(tar)
            procs.append(subprocess.Popen(ZSTD, stdin=tar.stdout, stdout=sending.fileno(), stderr=PIPE))
            for p in (unzstd, tar):
                assert p.stdout is not None
                p.stdout.close()  # only the next stage holds the pipe
            sending.close()
            deadline = time.monotonic() + timeout
            for p in procs[::-1]:
                said = p.communicate(timeout=max(0.1, deadline - time.monotonic()))[1]
                if p.returncode != 0:
                    raise OSError(f"{p.args!r} failed ({p.returncode}): {said.decode(errors='replace')}")
            return receivedBytes(receiving)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _busySeconds() -> float:
    """@return: The whole machine's busy CPU seconds so far (C{/proc/stat}: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """
    The machine's busy CPU seconds, sampled every C{interval} by a thread,
    to tell afterwards how many cores were busy in a stretch of time
    (whoever kept them busy).
    """

    def __init__(self, interval: float = 0.02) -> None:
        self._samples: list[tuple[float, float]] = [(time.monotonic(), _busySeconds())]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._samples.append((time.monotonic(), _busySeconds()))

    def busy(self, t0: float, t1: float) -> float:
        """
        @return: The cores busy on average from the last sample before
            C{t0} to the first after C{t1} (wait a sample after C{t1}).
        """
        time.sleep(0.05)
        samples = list(self._samples)
        first = max((s for s in samples if s[0] <= t0), default=samples[0])
        last = min((s for s in samples if s[0] >= t1), default=samples[-1])
        return (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else float("nan")

    def stop(self) -> None:
        """End the sampling thread."""
        self._stop.set()
        self._thread.join()
