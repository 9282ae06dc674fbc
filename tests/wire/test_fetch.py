"""
Tests for L{imgrelay.wire.fetch}: the fetch service's messages and framer.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.wire import fetch as _fetchwire
from imgrelay.wire.framing import Framer, HeaderReceived, MalformedHeader, PayloadChunk, PayloadDone


def events(framer: Framer[Any], data: bytes, oneByOne: bool) -> list[tuple[str, object]]:
    """
    Feed C{data} at once or a byte at a time; payload chunks joined.
    """
    out: list[tuple[str, object]] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if oneByOne else [data]
    for piece in pieces:
        for event in framer.feed(piece):
            if isinstance(event, HeaderReceived):
                out.append(("header", event.message.WhichOneof("kind")))
            elif isinstance(event, PayloadChunk):
                if out and out[-1][0] == "payload":
                    out[-1] = ("payload", out[-1][1] + bytes(event.data))  # type: ignore[operator]
                else:
                    out.append(("payload", bytes(event.data)))
            elif isinstance(event, PayloadDone):
                out.append(("done", None))
    return out


class FramerTests(SynchronousTestCase):
    """
    L{_fetchwire.fetchMessageFramer} parses what the cache sends.
    """

    def test_exchange(self) -> None:
        """
        Begin, an image header followed by its C{size} raw bytes, an empty
        image (no payload), and End parse the same fed at once and a byte
        at a time.
        """
        data = (
            _fetchwire.begin("s", 2, 5)
            + _fetchwire.image("", "a.img", 5, 1)
            + b"hello"
            + _fetchwire.image("1", "b.img", 0, 0)
            + _fetchwire.end(2, 5, b"\x00" * 32)
        )
        expected = [
            ("header", "begin"), ("header", "image"), ("payload", b"hello"), ("done", None),
            ("header", "image"), ("header", "end"),
        ]
        for oneByOne in (False, True):
            self.assertEqual(events(_fetchwire.fetchMessageFramer(), data, oneByOne), expected)

    def test_fields(self) -> None:
        """
        Each message carries its fields.
        """
        framer = _fetchwire.fetchMessageFramer()
        data = _fetchwire.begin("host:/d", 3, 7) + _fetchwire.image("/s/1", "x.img", 0, 0xFFFFFFFF) + _fetchwire.error("why")
        messages = [e.message for e in framer.feed(data) if isinstance(e, HeaderReceived)]
        self.assertEqual(
            (messages[0].begin.version, messages[0].begin.session, messages[0].begin.images, messages[0].begin.bytes),
            (_fetchwire.VERSION, "host:/d", 3, 7),
        )
        self.assertEqual(
            (messages[1].image.snapshot_id, messages[1].image.name, messages[1].image.crc32c), ("/s/1", "x.img", 0xFFFFFFFF)
        )
        self.assertEqual(messages[2].error.reason, "why")

    def test_emptyRefused(self) -> None:
        """
        A message of no known kind is a framing error.
        """
        framer = _fetchwire.fetchMessageFramer()
        self.assertRaises(MalformedHeader, list, framer.feed(_fetchwire.frame(_fetchwire.FetchMessage())))
