# -*- test-case-name: tests.e2e.test_faults -*-
"""
A CRIU-like dump as its own process, so that a test can kill it with
SIGKILL mid-dump: C{python -m imgrelay.testing.dumpclient SOCKET}.

It dumps L{IMAGES} through the proxy's capture socket (C{pages-1.img} open
the whole time, the small images sent meanwhile, C{inventory.img} last, as
a CRIU dump that succeeds does) and exits 0, or 1 with the error.
"""

from __future__ import annotations

import os
import sys

from imgrelay.testing import criu, traces


def images() -> dict[str, bytes]:
    """
    @return: What the dump writes, by name: the same on every call.
    """
    content = {f"small-{i}.img": traces.patternBytes(f"small-{i}.img", 100 + 997 * i) for i in range(20)}
    content["pages-1.img"] = traces.patternBytes("pages-1.img", 24 << 20)
    content[criu.INVENTORY] = criu.INVENTORY_CONTENT
    return content


def dump(path: str) -> None:
    """
    Dump L{images} through the capture socket at C{path}.
    """
    content = images()
    dumper = criu.StreamDumper(path)
    big = dumper.open("pages-1.img")
    for name in sorted(content):
        if name not in ("pages-1.img", criu.INVENTORY):
            dumper.send(name, content[name])
    criu.writeAll(big, content["pages-1.img"])
    os.close(big)
    dumper.finish(content[criu.INVENTORY])


if __name__ == "__main__":
    try:
        dump(sys.argv[1])
    except Exception as e:
        print(f"dump failed: {e}", file=sys.stderr)
        sys.exit(1)
