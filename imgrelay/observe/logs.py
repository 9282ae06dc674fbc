# -*- test-case-name: tests.observe.test_logs -*-
"""
What imgrelay logs per image.

A session event is one log line, but a dump holds hundreds of images of a
few hundred bytes: a line for each cost as much CPU as moving them
(measured: 45 % of the cache's time with 3000 files of 100 B to 4 KiB).
By default an image gets its own line when it is large; the session's
closing line counts them all, and every error is logged whatever its size.
C{--verbose} logs every image.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

#: Images of at least this many bytes get a line of their own.
LARGE_IMAGE = 1 << 20


def rate(size: int, seconds: float) -> float:
    """
    @return: C{size} bytes over C{seconds}, in MB/s (0 for no time).
    """
    return size / seconds / 1e6 if seconds > 0 else 0.0


def logsImage(size: int, verbose: bool) -> bool:
    """
    @param size: The image's size.
    @param verbose: Whether every image is logged.
    @return: Whether an image of C{size} bytes gets its own log line.
    """
    return verbose or size >= LARGE_IMAGE


def jsonObserver() -> ILogObserver:
    """
    A log observer factory for C{twistd --logger=imgrelay.observe.logs.jsonObserver}:
    every event as one JSON object per line on standard output, its
    fields (a session's C{stats} record among them) kept whole.

    @return: The observer.
    """
    return jsonFileLogObserver(sys.stdout)
