"""
Optional kernel-and-user profiles of the daemons with Linux C{perf}
(C{--perf DIR}), summed into what the CPU time was spent on.

py-spy (C{--profile}) sees Python frames only: a C{readv} or a page fault
is just time inside the Python function that made the call. Most of a
daemon's time per GiB is in the kernel, so this records call graphs with
C{perf record} (both kernel and user frames: it needs root, or
C{kernel.perf_event_paranoid} at 1 or less, and the C{perf} matching the
kernel) and puts every sample of the measured part of the run in one
bucket by what its call chain shows. Sampling costs a few percent: runs
with C{--perf} are for finding where the time goes, not for the table.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
from typing import Iterator, Optional

#: Samples per second of CPU time.
FREQUENCY = 999

#: (bucket, any of these functions in the call chain), first match wins:
#: the order puts the specific before the general.
_BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("page faults (fresh memory)", ("populate_vma_page_range", "do_anonymous_page", "exc_page_fault")),
    ("checksum (CRC-32C)", ("_crc32c_",)),
    ("vmsplice into pipes", ("__do_sys_vmsplice",)),
    ("pipe read (copy)", ("anon_pipe_read", "pipe_read")),
    ("pipe write (copy)", ("anon_pipe_write", "pipe_write")),
    ("TCP send (copy + loopback)", ("tcp_sendmsg",)),
    ("TCP receive (copy)", ("tcp_recvmsg",)),
    ("unmap and free", ("__vm_munmap", "exit_mmap", "do_madvise", "unmap_page_range")),
    ("epoll", ("do_epoll_wait", "do_epoll_ctl")),
    ("interrupts", ("handle_softirqs", "sysvec_apic_timer_interrupt")),
]


def perf() -> Optional[str]:
    """@return: The perf executable, if installed."""
    return shutil.which("perf")


def attach(pid: int, output: str) -> subprocess.Popen[bytes]:
    """
    Start recording C{pid} into C{output}, with timestamps on
    C{CLOCK_MONOTONIC} (Python's C{time.monotonic}); the recorder ends
    when the process does.
    """
    exe = perf()
    if exe is None:
        raise RuntimeError("--perf needs Linux perf (the linux-perf package matching the kernel)")
    return subprocess.Popen(
        [exe, "record", "--quiet", "-g", "-F", str(FREQUENCY), "-k", "CLOCK_MONOTONIC", "-p", str(pid), "-o", output],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _samples(path: str) -> Iterator[tuple[float, list[tuple[str, str]]]]:
    """
    @return: Each sample's time and call chain, leaf first, as (function,
        object) pairs.
    """
    out = subprocess.run(
        [perf() or "perf", "script", "-i", path, "-F", "time,ip,sym,dso"], capture_output=True, text=True, check=True,
    ).stdout
    when: Optional[float] = None
    chain: list[tuple[str, str]] = []
    for line in out.splitlines():
        if not line.strip():
            if when is not None:
                yield when, chain
            when, chain = None, []
        elif when is None:
            when = float(line.split()[0].rstrip(":"))
        else:
            parts = line.split(None, 1)
            rest = parts[1] if len(parts) > 1 else "?"
            name, _, dso = rest.rpartition(" (")
            chain.append((name or rest, dso.rstrip(")")))
    if when is not None:
        yield when, chain


def bucket(chain: list[tuple[str, str]]) -> str:
    """
    @return: What a sample with this call chain (leaf first) was spent on.
    """
    names = [name for name, _ in chain]
    for label, markers in _BUCKETS:
        if any(marker in name for name in names for marker in markers):
            return label
    if not chain:
        return "unknown"
    if "kernel" in chain[0][1]:
        return "other kernel"
    if "libpython" in chain[0][1] or "python" in os.path.basename(chain[0][1]):
        return "Python interpreter"
    return "other user space"


def summary(path: str, since: float, gib: float, top: int = 12) -> str:
    """
    @param path: A C{perf record} output.
    @param since: Where the measured part began (C{time.monotonic}).
    @param gib: GiB the run moved, to state CPU seconds per GiB.
    @return: The buckets of the samples since C{since}, largest first.
    """
    counts: collections.Counter[str] = collections.Counter()
    for when, chain in _samples(path):
        if when >= since:
            counts[bucket(chain)] += 1
    total = sum(counts.values())
    if not total:
        return f"{os.path.basename(path)}: no samples"
    lines = [f"{os.path.basename(path)}: {total / FREQUENCY / gib:.2f} CPU s/GiB sampled"]
    for label, n in counts.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}%  {n / FREQUENCY / gib:5.3f} s/GiB  {label}")
    return "\n".join(lines)
