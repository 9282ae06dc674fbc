"""
Tests for L{imgrelay.cli.status}: the daemon's address in every accepted
form, the table, and a real HTTP server on 127.0.0.1 (twisted.web, in this
process) read by the blocking client in a thread.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from imgrelay.cli import main as _cli
from imgrelay.cli.status import StatusError, duration, fetchStatus, renderStatus, statusURL

#: The shared contract's sample document, with a key no reader knows.
SAMPLE: dict[str, Any] = {
    "daemon": "cache",
    "version": "0.1.0",
    "uptime": 12.5,
    "sessions": [
        {"name": "host-a-dump-1f3e9c2a", "state": "receiving", "images": 12, "open": 2, "bytes": 104857600,
         "link_bytes": 15420235, "ratio": 6.8, "rate": 812345678.0, "seconds": 1.9, "error": None, "snapshots": ["1", "2"], "future": {"x": 1}},
        {"name": "host-b", "state": "failed", "images": 3, "open": 0, "bytes": 2048, "rate": 0,
         "seconds": 0.2, "error": "checksum mismatch on pages-1.img", "snapshots": []},
    ],
    "totals": {"bytes": 104857600, "link_bytes": 15420235, "images": 12, "sessions": {"complete": 3, "failed": 1},
               "errors": {"checksum": 0, "protocol": 1}},
    "unknown": True,
}


class StatusURLTests(SynchronousTestCase):
    """
    L{statusURL} takes a URL, C{host:port} or an endpoint string.
    """

    def test_forms(self) -> None:
        """
        Every documented form names the same document; an endpoint that
        listens on every interface is reached on loopback.
        """
        cases = {
            "http://127.0.0.1:9180": "http://127.0.0.1:9180/status",
            "http://127.0.0.1:9180/": "http://127.0.0.1:9180/status",
            "http://h:1/other/status": "http://h:1/other/status",
            "127.0.0.1:9180": "http://127.0.0.1:9180/status",
            "cache.example:9180": "http://cache.example:9180/status",
            "[::1]:9180": "http://[::1]:9180/status",
            "tcp:9180:interface=127.0.0.1": "http://127.0.0.1:9180/status",
            "tcp:9180": "http://127.0.0.1:9180/status",
            "tcp:9180:interface=0.0.0.0": "http://127.0.0.1:9180/status",
            "tcp6:9180:interface=\\:\\:1": "http://[::1]:9180/status",
            "tcp6:9180:interface=\\:\\:": "http://[::1]:9180/status",
            "tcp:host=127.0.0.1:port=9180": "http://127.0.0.1:9180/status",
            "tcp:10.0.0.2:9180": "http://10.0.0.2:9180/status",
        }
        for given, expected in cases.items():
            self.assertEqual(statusURL(given), expected, given)

    def test_refused(self) -> None:
        """
        Anything else is one clear error.
        """
        for given in ["cache", "host:port", "tcp:interface=1.2.3.4", "tcp:99999", "unix:/x", ":"]:
            self.assertRaises(StatusError, statusURL, given)


class RenderTests(SynchronousTestCase):
    """
    L{renderStatus} shows the document as a table.
    """

    def test_table(self) -> None:
        """
        A heading, one aligned row per session with human-readable bytes,
        how much smaller they went on the link, rates, the error if any,
        and the totals; unknown keys are ignored.
        """
        self.assertEqual(
            renderStatus(SAMPLE).splitlines(),
            [
                "cache 0.1.0, up 12.5 s",
                "NAME                  STATE      IMAGES  OPEN      BYTES  SHRUNK         RATE  ERROR",
                "host-a-dump-1f3e9c2a  receiving      12     2  100.0 MiB    6.8x  774.7 MiB/s  -",
                "host-b                failed          3     0    2.0 KiB       -            -  "
                "checksum mismatch on pages-1.img",
                "totals: 100.0 MiB in 12 images, 14.7 MiB on the link; sessions: 3 complete, 1 failed; "
                "errors: 0 checksum, 1 protocol",
            ],
        )

    def test_missingAndOdd(self) -> None:
        """
        Missing keys and values of the wrong type show as C{?}; an empty
        session list says so.
        """
        text = renderStatus({"sessions": [{"name": "x", "images": "many"}, "junk"]})
        self.assertIn("? ?, up ?", text)
        self.assertIn("x     ?           ?     ?      ?       -     ?  -", text)
        self.assertIn("no sessions", renderStatus({"daemon": "proxy", "sessions": []}))

    def test_duration(self) -> None:
        """
        Durations are shown in the largest sensible units.
        """
        self.assertEqual([duration(s) for s in (0.25, 59.9, 200, 7380)], ["0.2 s", "59.9 s", "3m 20s", "2h 03m"])


class _Status(Resource):
    isLeaf = True

    def __init__(self, body: bytes, code: int = 200) -> None:
        Resource.__init__(self)
        self.body = body
        self.code = code

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        return self.body


class HTTPTests(TestCase):
    """
    The status command against a real HTTP server on 127.0.0.1.
    """

    def serve(self, body: bytes, code: int = 200) -> int:
        root = Resource()
        root.putChild(b"status", _Status(body, code))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def test_table(self) -> None:
        """
        C{imgrelay status tcp:PORT:interface=127.0.0.1} prints the table of
        the document the daemon serves, and exits 0.
        """
        port = self.serve(json.dumps(SAMPLE).encode())
        stdout, stderr = io.StringIO(), io.StringIO()
        status = await deferToThread(_cli.main, ["status", f"tcp:{port}:interface=127.0.0.1"], stdout, stderr)
        self.assertEqual((status, stderr.getvalue()), (0, ""))
        self.assertEqual(stdout.getvalue(), renderStatus(SAMPLE) + "\n")

    async def test_json(self) -> None:
        """
        C{--json} prints the document itself.
        """
        port = self.serve(json.dumps(SAMPLE).encode())
        stdout = io.StringIO()
        status = await deferToThread(_cli.main, ["status", "--json", f"127.0.0.1:{port}"], stdout, io.StringIO())
        self.assertEqual((status, json.loads(stdout.getvalue())), (0, SAMPLE))

    async def test_errors(self) -> None:
        """
        An HTTP error, a body that is not JSON, or JSON that is not an
        object is one clear error.
        """
        for body, code, message in [
            (b"{}", 404, "HTTP 404"), (b"<html>", 200, "did not answer JSON"), (b"[1]", 200, "not answer a status document"),
        ]:
            port = self.serve(body, code)
            error = await deferToThread(self.assertRaises, StatusError, fetchStatus, f"http://127.0.0.1:{port}/status")
            self.assertIn(message, str(error))

    async def test_notFound(self) -> None:
        """
        A path the daemon does not serve: exit 1 with one line naming the
        URL and the HTTP status.
        """
        port = self.serve(b"{}")
        stderr = io.StringIO()
        status = await deferToThread(_cli.main, ["status", f"http://127.0.0.1:{port}/missing"], io.StringIO(), stderr)
        self.assertEqual(status, 1)
        self.assertEqual(stderr.getvalue(), f"imgrelay status: http://127.0.0.1:{port}/missing: HTTP 404 Not Found\n")

    async def test_unreachable(self) -> None:
        """
        Nothing listening: exit 1 with one line saying the daemon cannot be
        reached.
        """
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
        number = port.getHost().port
        await port.stopListening()
        stderr = io.StringIO()
        status = await deferToThread(_cli.main, ["status", f"127.0.0.1:{number}"], io.StringIO(), stderr)
        self.assertEqual(status, 1)
        self.assertEqual(stderr.getvalue(), f"imgrelay status: cannot reach http://127.0.0.1:{number}/status: Connection refused\n")
