# -*- test-case-name: tests.realcriu.test_migrate -*-
"""
C{imgrelay migrate} from its arguments: the proxy's config, the reactor,
the summary and the exit status (the migration itself is
L{imgrelay.cli.migrate.migrate}).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import socket
from typing import Any, TextIO

from imgrelay.cli.progress import Progress, humanBytes

#: Exit statuses: migrated; not migrated (the process runs here); the
#: process left stopped at the destination (finish by hand); a usage error.
MIGRATED, KEPT, STOPPED, USAGE = 0, 1, 3, 2


def _fail(stderr: TextIO, message: str, status: int = KEPT) -> int:
    stderr.write(f"imgrelay migrate: {message}\n")
    return status


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """
    Run C{imgrelay migrate}.

    @return: The exit status.
    """
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    from imgrelay.cli.migrate import MigrateError, imagesDirectory, migrate
    from imgrelay.config import ProxyConfig
    from imgrelay.local.criubin import CriuNotFound, findCriu
    from imgrelay.transport.tls import TLSFiles

    try:
        tls = TLSFiles.given(args.tls_cert, args.tls_key, args.tls_ca)
    except ValueError as e:
        return _fail(stderr, str(e), USAGE)
    try:
        criu = args.criu or findCriu()
        dumpArgs = shlex.split(args.dump_args)
    except (CriuNotFound, ValueError) as e:
        return _fail(stderr, str(e), USAGE)
    imagesDir = imagesDirectory()
    name = args.session or f"{socket.gethostname()}-migrate-{args.pid}"
    try:
        extra: dict[str, Any] = {}
        if args.tls_hostname:
            extra["tlsHostname"] = args.tls_hostname
        config = ProxyConfig(
            connect=args.to, imagesDir=imagesDir, sessionName=name, oneshot=True, verdict=True,
            compress=args.compress, reconnectTimeout=args.reconnect_timeout,
            tls=tls, **extra,
        )
    except ValueError as e:
        shutil.rmtree(imagesDir, ignore_errors=True)
        return _fail(stderr, str(e), USAGE)
    status: list[int] = []

    async def main(reactor: Any) -> None:
        def note(line: str) -> None:
            stderr.write(f"imgrelay migrate: {line}\n")

        try:
            result = await migrate(
                reactor, args.pid, config, criu, dumpArgs, args.verdict_timeout, Progress(stderr, "migrate"), note,
            )
        except MigrateError as e:
            status.append(_fail(stderr, str(e), STOPPED))
            return
        if args.json:
            stdout.write(json.dumps(result.summary()) + "\n")
        if result.outcome != "migrated":
            status.append(_fail(stderr, result.reason))
            return
        onLink = f" ({humanBytes(result.linkBytes)} on the link)" if result.linkBytes != result.bytes else ""
        if not args.json:
            stdout.write(
                f"migrated process {args.pid}: it runs at the destination as pid {result.restoredPid}; "
                f"{result.images} images, {humanBytes(result.bytes)}{onLink}; dump {result.dumpSeconds:.2f} s, "
                f"downtime {result.downtime:.2f} s (frozen here to running there)\n"
            )
        status.append(MIGRATED)

    try:
        react(lambda reactor: ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None) and not status:
            return e.code if isinstance(e.code, int) else KEPT
    return status[0] if status else _fail(stderr, "interrupted", 130)
