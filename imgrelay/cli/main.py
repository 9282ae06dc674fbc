# -*- test-case-name: tests.cli.test_main -*-
"""
The C{imgrelay} command: C{fetch} a completed session from a cache into a
directory, show a daemon's C{status}, C{send} an image directory to a
cache, C{migrate} a process to a cache that restores it, and C{resolve} by
hand a migration left stopped. See C{docs/cli.md} and C{docs/migrate.md}.

Every failure ends the command with one line on stderr, C{imgrelay
COMMAND: what went wrong}, and a non-zero status.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional, Sequence, TextIO

from imgrelay.cli.progress import Progress, humanBytes

#: Exit statuses.
OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130

#: What C{--compress} takes: the proxy's modes (L{imgrelay.proxy.packer.MODES}),
#: spelled here so that parsing a command loads neither Twisted nor codecs.
COMPRESS_MODES = ("auto", "zstd", "lz4", "none")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgrelay", description="Fetch, inspect and send imgrelay migration sessions."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = commands.add_parser(
        "fetch", help="write every image of a completed cache session into a directory",
        description="Wait until the cache's session is complete, then write each of its images into DIR "
        "(an image of snapshot S into DIR/S-made-safe/); nothing existing is overwritten.",
    )
    fetch.add_argument("--from", dest="source", required=True, metavar="SOCKET_OR_DIR",
                       help="the cache's imgrelay-fetch.sock, or its images directory")
    fetch.add_argument("directory", metavar="DIR", help="where to write the images (created if missing)")

    status = commands.add_parser("status", help="show a daemon's sessions from its /status endpoint")
    status.add_argument("endpoint", metavar="ENDPOINT",
                        help="http://HOST:PORT, HOST:PORT, or an endpoint string such as tcp:9180:interface=127.0.0.1")
    status.add_argument("--json", action="store_true", help="print the document as it came")

    send = commands.add_parser(
        "send", help="send an image directory to a cache as one session",
        description="Send every regular file of DIR to a cache over the link protocol; exit 0 only once "
        "the cache confirmed the session.",
    )
    send.add_argument("directory", metavar="DIR")
    send.add_argument("--to", required=True, metavar="ENDPOINT", help="the cache's link, e.g. tcp:host=dest:port=7070")
    send.add_argument("--session", metavar="NAME", help="the session's name (default HOST-DIRNAME-HASH)")
    send.add_argument("--reconnect-timeout", metavar="SECONDS", type=float, default=60.0,
                      help="after a broken link, redial and resume; fail after this long without one (default 60)")
    send.add_argument("--snapshot", metavar="ID", default="", help="the snapshot id of the images (default none)")
    send.add_argument("--compress", choices=COMPRESS_MODES, default="auto",
                      help="link compression, as the proxy's (default auto)")
    send.add_argument("--tls-cert", metavar="PEM")
    send.add_argument("--tls-key", metavar="PEM")
    send.add_argument("--tls-ca", metavar="PEM")
    send.add_argument("--tls-hostname", metavar="NAME",
                      help="the name the cache's certificate must carry (default: the host of --to)")

    migrate = commands.add_parser(
        "migrate", help="migrate a process tree to a cache that restores it (imgrelay-cache --restore)",
        description="Dump the tree at PID with criu dump --stream --leave-stopped through a proxy in this "
        "process, wait for the destination's restore, then kill this copy and have the destination resume its "
        "own; on any failure before that, resume this copy. Exit 0 only once the process runs there.",
    )
    migrate.add_argument("--pid", required=True, type=int, help="the root of the tree to migrate")
    migrate.add_argument("--to", required=True, metavar="ENDPOINT", help="the cache's link, e.g. tcp:host=dest:port=7070")
    migrate.add_argument("--session", metavar="NAME", help="the session's name (default HOST-migrate-PID)")
    migrate.add_argument("--compress", choices=COMPRESS_MODES, default="auto",
                         help="link compression (default auto)")
    migrate.add_argument("--criu", metavar="PATH", help="the CRIU binary (default $IMGRELAY_CRIU, else criu on PATH)")
    migrate.add_argument("--dump-args", metavar="ARGS", default="", help="more arguments for criu dump")
    migrate.add_argument("--reconnect-timeout", metavar="SECONDS", type=float, default=60.0,
                         help="give up after this long without a link to the cache (default 60)")
    migrate.add_argument("--verdict-timeout", metavar="SECONDS", type=float, default=300.0,
                         help="give up after this long without the restore's verdict (default 300)")
    migrate.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    for option in ("--tls-cert", "--tls-key", "--tls-ca"):
        migrate.add_argument(option, metavar="PEM")
    migrate.add_argument("--tls-hostname", metavar="NAME")

    resolve = commands.add_parser(
        "resolve", help="finish by hand a migration that left a process stopped (see docs/migrate.md)",
        description="Resume (SIGCONT) or kill (SIGKILL) every task of the stopped tree at PID.",
    )
    what = resolve.add_mutually_exclusive_group(required=True)
    what.add_argument("--resume", metavar="PID", type=int, help="resume the tree at PID")
    what.add_argument("--kill", metavar="PID", type=int, help="kill the tree at PID")
    return parser


def _fail(stderr: TextIO, command: str, message: str) -> int:
    stderr.write(f"imgrelay {command}: {message}\n")
    return FAILED


def _fetch(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from imgrelay.cli import fetch as _fetchclient

    progress = Progress(stderr, "fetch")
    try:
        sock = _fetchclient.connect(args.source)
        try:
            progress.note(f"connected to {_fetchclient.fetchSocketPath(args.source)}; waiting for the session to end")
            fetched = _fetchclient.receive(sock, args.directory, progress)
        finally:
            sock.close()
            progress.close()
    except _fetchclient.FetchError as e:
        return _fail(stderr, "fetch", str(e))
    stdout.write(
        f"fetched session {fetched.session}: {fetched.images} images, {humanBytes(fetched.bytes)} "
        f"({fetched.bytes} bytes) into {args.directory}\n"
    )
    return OK


def _status(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from imgrelay.cli import status as _clistatus

    try:
        document = _clistatus.fetchStatus(_clistatus.statusURL(args.endpoint))
    except _clistatus.StatusError as e:
        return _fail(stderr, "status", str(e))
    if args.json:
        stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        stdout.write(_clistatus.renderStatus(document) + "\n")
    return OK


def _send(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react
    from twisted.internet.threads import deferToThread

    from imgrelay.cli import send as _clisend
    from imgrelay.proxy.packer import Compression
    from imgrelay.core.names import defaultSessionName
    from imgrelay.transport.tls import TLSFiles

    try:
        tls = TLSFiles.given(args.tls_cert, args.tls_key, args.tls_ca)
    except ValueError as e:
        return _fail(stderr, "send", str(e))
    name = args.session or defaultSessionName(args.directory)
    status: list[int] = []

    async def run(reactor: Any) -> None:
        # The reactor stops before the session is over only on a signal;
        # closing the link then fails the session.
        stopping: list[bool] = []
        reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
        try:
            endpoint = _clisend.linkEndpoint(reactor, args.to, tls, args.tls_hostname)
            compression = Compression(args.compress, lambda work, *a: deferToThread(work, *a))
            outcome = await _clisend.send(
                reactor, args.directory, endpoint, name, args.snapshot, Progress(stderr, "send"), args.reconnect_timeout,
                compression,
            )
        except _clisend.SendError as e:
            if stopping:
                return
            status.append(_fail(stderr, "send", str(e)))
            return
        onLink = ""
        if outcome.linkBytes and outcome.linkBytes != outcome.bytes:
            onLink = f", {humanBytes(outcome.linkBytes)} on the link ({outcome.bytes / outcome.linkBytes:.1f}x smaller)"
        stdout.write(
            f"sent session {outcome.name}: {outcome.images} images, {humanBytes(outcome.bytes)} "
            f"({outcome.bytes} bytes){onLink} in {outcome.seconds:.2f} s; the cache confirmed it\n"
        )
        status.append(OK)

    try:
        react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return e.code if isinstance(e.code, int) else FAILED
    if not status:
        # The reactor stopped first: a signal.
        stderr.write("imgrelay send: interrupted before the cache confirmed the session\n")
        return INTERRUPTED
    return status[0]


def _migrate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from imgrelay.cli.migraterun import run

    return run(args, stdout, stderr)


def _resolve(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from imgrelay.local.proctree import killTree, resumeTree

    pid = args.resume if args.resume is not None else args.kill
    tasks = (resumeTree if args.resume is not None else killTree)(pid)
    if not tasks:
        return _fail(stderr, "resolve", f"no process {pid}")
    stdout.write(f"{'resumed' if args.resume is not None else 'killed'} {len(tasks)} tasks of the tree at {pid}\n")
    return OK


def main(argv: Optional[Sequence[str]] = None, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    """
    Run the command.

    @param argv: The arguments after the program name; C{sys.argv[1:]} by
        default.
    @return: The exit status.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else USAGE
    try:
        command = {"fetch": _fetch, "status": _status, "send": _send, "migrate": _migrate, "resolve": _resolve}[
            args.command
        ]
        return command(args, stdout, stderr)
    except KeyboardInterrupt:
        stderr.write(f"imgrelay {args.command}: interrupted\n")
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
