"""
Optional sampling profiles of the daemons with py-spy (C{--profile DIR}),
and a summary of where their time went.

py-spy is not a dependency: C{pip install py-spy} into the virtualenv to
use this. It samples from outside the process (C{--nonblocking}: the
daemon is never paused), at 200 Hz, with C{--idle} so that time blocked in
the reactor's C{epoll} shows as such; it costs some CPU of its own, so runs
with C{--profile} are for finding where the time goes, not for the table.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from typing import Optional


def pySpy() -> Optional[str]:
    """@return: The py-spy executable, if installed."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def attach(pid: int, output: str) -> subprocess.Popen[bytes]:
    """
    Start recording C{pid} into C{output} (collapsed stacks); the recorder
    ends when the process does.
    """
    exe = pySpy()
    if exe is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy into the same virtualenv")
    return subprocess.Popen(
        [exe, "record", "--nonblocking", "--idle", "--rate", "200", "--format", "raw", "--output", output, "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _frame(frame: str) -> str:
    # py-spy's raw frames look like "function (path/to/file.py:LINE)".
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _ = where.rpartition(":")
    return f"{name} ({os.path.basename(path) or where})"


#: Leaf frames that mean "waiting in the reactor for something to do".
_IDLE = ("doPoll (epollreactor.py)", "doPoll (pollreactor.py)", "doSelect (selectreactor.py)")


def _isIdle(name: str) -> bool:
    return name.endswith(_IDLE)


def summary(path: str, top: int = 12) -> str:
    """
    @return: The share of samples idle in the reactor's poll, and the
        functions with the most samples at the top of the stack (own time)
        as a share of the busy samples.
    """
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            own[_frame(stack.split(";")[-1])] += n
    idle = sum(own.pop(name) for name in [n for n in own if _isIdle(n)])
    busy = total - idle
    if not busy:
        return f"{os.path.basename(path)}: no busy samples"
    lines = [f"{os.path.basename(path)}: {total} samples, {100 * idle / total:.0f}% idle in the reactor's poll; of the busy ones:"]
    for name, n in own.most_common(top):
        lines.append(f"  {100 * n / busy:5.1f}%  {name}")
    return "\n".join(lines)
