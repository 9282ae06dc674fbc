# -*- test-case-name: tests.cli.test_status -*-
"""
C{imgrelay status}: read a daemon's C{/status} document over HTTP and show
it as a table, one row per session.

The daemon's address may be written as a URL (C{http://host:port}),
C{host:port}, or the endpoint string the daemon listens on
(C{tcp:9180:interface=127.0.0.1}, or a client one,
C{tcp:host=127.0.0.1:port=9180}). Readers ignore keys they do not know, and
show C{?} for those missing.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Optional
from urllib.parse import urlsplit

from imgrelay.cli.progress import humanBytes

#: The largest document read.
MAX_DOCUMENT = 16 << 20


class StatusError(Exception):
    """
    The status could not be read; the message is one line for the user.
    """


def _splitEndpoint(description: str) -> list[str]:
    # Twisted's endpoint strings separate by ':' and escape one with '\'.
    parts, current, escaped = [], "", False
    for ch in description:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _hostPort(host: str, port: str, given: str) -> str:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StatusError(f"{given!r}: {port!r} is not a port number")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/status"


def statusURL(endpoint: str) -> str:
    """
    The URL of a daemon's status document.

    @param endpoint: C{http://host:port[/path]}, C{host:port}, or a C{tcp:}
        endpoint string (server or client form); a listening address of all
        interfaces is reached on loopback.
    @raise StatusError: For anything else.
    """
    if endpoint.startswith(("http://", "https://")):
        url = urlsplit(endpoint)
        if url.path in ("", "/"):
            return endpoint.rstrip("/") + "/status"
        return endpoint
    if endpoint.startswith(("tcp:", "tcp6:")):
        args = _splitEndpoint(endpoint)[1:]
        named = dict(a.split("=", 1) for a in args if "=" in a)
        positional = [a for a in args if "=" not in a]
        if "port" in named:
            return _hostPort(named.get("host", ""), named["port"], endpoint)
        if len(positional) == 1:
            return _hostPort(named.get("interface", ""), positional[0], endpoint)
        if len(positional) == 2:
            return _hostPort(positional[0], positional[1], endpoint)
        raise StatusError(f"{endpoint!r} names no port")
    host, sep, port = endpoint.rpartition(":")
    if not sep:
        raise StatusError(f"{endpoint!r} is not http://HOST:PORT, HOST:PORT or a tcp: endpoint")
    return _hostPort(host.strip("[]"), port, endpoint)


def fetchStatus(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """
    GET the status document (never through an HTTP proxy).

    @return: The document.
    @raise StatusError: If it cannot be read or is not a JSON object.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read(MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as e:
        raise StatusError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = getattr(e.reason, "strerror", None) or e.reason
        raise StatusError(f"cannot reach {url}: {reason}") from None
    except OSError as e:
        raise StatusError(f"cannot read {url}: {e}") from None
    if len(body) > MAX_DOCUMENT:
        raise StatusError(f"{url}: the document is over {MAX_DOCUMENT} bytes")
    try:
        document = json.loads(body)
    except ValueError as e:
        raise StatusError(f"{url} did not answer JSON: {e}") from None
    if not isinstance(document, dict):
        raise StatusError(f"{url} did not answer a status document (a JSON object)")
    return document


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _count(value: Any) -> str:
    n = _number(value)
    return "?" if n is None else f"{n:.0f}"


def _bytes(value: Any) -> str:
    n = _number(value)
    return "?" if n is None else humanBytes(n)


def _rate(value: Any) -> str:
    n = _number(value)
    return "?" if n is None else ("-" if n == 0 else humanBytes(n) + "/s")


def _ratio(value: Any) -> str:
    # Image bytes per byte on the link; none before any byte, or from a
    # daemon that does not count them.
    n = _number(value)
    return "-" if n is None else f"{n:.1f}x"


def duration(seconds: float) -> str:
    """
    @return: C{seconds} for people: C{"12.5 s"}, C{"3m 20s"}, C{"2h 03m"}.
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def _text(value: Any) -> str:
    return "?" if value is None else str(value).replace("\n", " ")


def renderStatus(document: dict[str, Any]) -> str:
    """
    The status document as text: a heading, a table of sessions, and the
    totals.
    """
    uptime = _number(document.get("uptime"))
    lines = [
        f"{_text(document.get('daemon'))} {_text(document.get('version'))}, "
        f"up {'?' if uptime is None else duration(uptime)}"
    ]
    sessions = document.get("sessions")
    rows = [["NAME", "STATE", "IMAGES", "OPEN", "BYTES", "SHRUNK", "RATE", "ERROR"]]
    for s in sessions if isinstance(sessions, list) else []:
        if not isinstance(s, dict):
            continue
        error = s.get("error")
        rows.append([
            _text(s.get("name")), _text(s.get("state")), _count(s.get("images")), _count(s.get("open")),
            _bytes(s.get("bytes")), _ratio(s.get("ratio")), _rate(s.get("rate")),
            "-" if error is None else _text(error),
        ])
    if len(rows) == 1:
        lines.append("no sessions")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        right = {2, 3, 4, 5, 6}
        for r in rows:
            cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
            lines.append("  ".join(cells + [r[-1]]).rstrip())
    totals = document.get("totals")
    if isinstance(totals, dict):
        parts = [f"totals: {_bytes(totals.get('bytes'))} in {_count(totals.get('images'))} images"]
        onLink = _number(totals.get("link_bytes"))
        if onLink and onLink != _number(totals.get("bytes")):
            parts[0] += f", {_bytes(onLink)} on the link"
        for key in ("sessions", "errors"):
            counts = totals.get(key)
            if isinstance(counts, dict) and counts:
                parts.append(f"{key}: " + ", ".join(f"{_count(v)} {k}" for k, v in sorted(counts.items())))
        lines.append("; ".join(parts))
    return "\n".join(lines)
