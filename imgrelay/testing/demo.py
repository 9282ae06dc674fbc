# -*- test-case-name: tests.e2e.test_demo -*-
"""
The loopback demo: C{python -m imgrelay.testing.demo}.

It starts a real imgrelay-cache and imgrelay-proxy (C{twistd}, C{--oneshot})
on 127.0.0.1, replays the bundled CRIU 4.2 dump through the proxy's
C{--stream} socket together with a generated 64 MiB pages image, restores
everything through the cache's socket while the dump runs, checks every
byte, and prints what moved and how fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from typing import Optional

from imgrelay.testing import criu, traces
from imgrelay.testing.daemons import Daemon, freePort


def main(argv: Optional[list[str]] = None) -> int:
    """
    Run the demo.

    @return: The exit status: 0 when every byte arrived intact.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages-mib", type=int, default=64, help="size of the generated pages image")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="imgrelay-demo-") as base:
        dumpDir = os.path.join(base, "dump")
        restoreDir = os.path.join(base, "restore")
        os.mkdir(dumpDir, 0o700)
        os.mkdir(restoreDir, 0o700)
        port = freePort()
        cache = Daemon(
            "imgrelay-cache",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--images-dir", restoreDir, "--oneshot"],
            os.path.join(base, "cache.log"),
        )
        proxy = Daemon(
            "imgrelay-proxy",
            ["--connect", f"tcp:host=127.0.0.1:port={port}", "--images-dir", dumpDir, "--oneshot"],
            os.path.join(base, "proxy.log"),
        )
        try:
            return _run(cache, proxy, dumpDir, restoreDir, args.pages_mib << 20)
        finally:
            proxy.stop()
            cache.stop()


def _run(cache: Daemon, proxy: Daemon, dumpDir: str, restoreDir: str, pagesSize: int) -> int:
    serve = os.path.join(restoreDir, "streamer-serve.sock")
    capture = os.path.join(dumpDir, "streamer-capture.sock")
    cache.waitFor(path=serve)
    proxy.waitFor(path=capture)

    images = traces.traceImages()
    images["pages-4.img"] = traces.patternBytes("pages-4.img", pagesSize)
    events = traces.loadTrace("dump-stream.json")["events"]
    events = events[:-1] + [{"op": "open", "name": "pages-4.img"}, {"op": "close", "name": "pages-4.img"}] + events[-1:]
    names = [name for name, _ in traces.restoreNames()] + sorted(n for n in images if n.startswith("pages-"))

    restored: dict[str, Optional[bytes]] = {}
    errors: list[BaseException] = []

    def restore() -> None:
        try:
            r = criu.StreamRestorer(serve)
            restored.update(r.fetchAll(names))
            r.close()
        except BaseException as e:
            errors.append(e)

    start = time.monotonic()
    restorer = threading.Thread(target=restore)
    restorer.start()
    traces.replayDump(capture, images, events)
    restorer.join()
    seconds = time.monotonic() - start

    proxyStatus = proxy.wait()
    cacheStatus = cache.wait()
    total = sum(map(len, images.values()))
    wrong = sorted(name for name, content in images.items() if restored.get(name) != content)
    print(f"files:   {len(images)} images ({len(restored) - len(images)} requests for absent images answered 'does not exist')")
    print(f"bytes:   {total}")
    print(f"seconds: {seconds:.3f} (dump and overlapping restore, end to end)")
    print(f"rate:    {total / seconds / 1e6:.1f} MB/s")
    print(f"proxy exit status {proxyStatus}, cache exit status {cacheStatus}")
    if errors or wrong or proxyStatus or cacheStatus:
        print(f"FAILED: restore errors {errors}, wrong images {wrong}", file=sys.stderr)
        print("--- proxy log\n" + proxy.log() + "--- cache log\n" + cache.log(), file=sys.stderr)
        return 1
    print("every byte verified: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
