"""
C{python -m benchmarks._spawn FD -- COMMAND...}: run COMMAND as a child and
report its pid, then its exit and resource usage, as JSON lines on FD.

Why a wrapper: Linux carries a process's peak RSS (C{ru_maxrss}) across
C{exec} from the memory it had before, and C{subprocess} starts children
from the runner's own memory (C{vfork}), so every child's C{ru_maxrss}
would be at least the runner's peak (hundreds of MiB, with its receive
buffer). This small, fresh interpreter forks and execs the command, so
the command's peak RSS starts from this process's few MiB, and reaps it
with C{os.wait4} for exact figures.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def main() -> int:
    """
    Run the command, forward SIGTERM and SIGINT to it, report.

    @return: The command's exit status (128 + N if killed by signal N).
    """
    fd = int(sys.argv[1])
    argv = sys.argv[sys.argv.index("--") + 1 :]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    out = os.fdopen(fd, "w")
    out.write(json.dumps({"pid": pid}) + "\n")
    out.flush()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: os.kill(pid, s))
    _, status, ru = os.wait4(pid, 0)
    exited = time.monotonic()
    code = os.waitstatus_to_exitcode(status)
    out.write(json.dumps({
        "status": code, "exited": exited, "user": ru.ru_utime, "system": ru.ru_stime, "maxrss": ru.ru_maxrss * 1024,
    }) + "\n")
    out.close()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
