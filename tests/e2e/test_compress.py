"""
End-to-end with link compression: the real twistd plugins on 127.0.0.1.
"""

from __future__ import annotations

import json
import os

from tests.e2e.test_e2e import _DaemonCase
from tests.e2e.test_tls import _options
from tests.transport.test_tls import Authority


def _heapPages(size: int) -> bytes:
    """
    Bytes that shrink about as a Python heap's pages do.
    """
    base = b"".join(b"object-%d {'name': 'item-%d', 'n': %d}\0" % (i % 501, i % 77, i) for i in range(20_000))
    return (base * (size // len(base) + 1))[:size]


class CompressedEndToEndTests(_DaemonCase):
    """
    A migration with C{--compress} arrives byte for byte.
    """

    def images(self) -> dict[str, bytes]:
        images = {f"small-{i}.img": os.urandom(100 + i) for i in range(20)}
        images["pages-1.img"] = _heapPages(48 << 20)
        return images

    def check(self, proxyArgs: tuple[str, ...], cacheArgs: tuple[str, ...] = ()) -> tuple[str, str]:
        """
        Migrate, and check every byte and both daemons' records.

        @return: The proxy's log and the ratio its record gives.
        """
        stats = {side: os.path.join(self.base, f"{side}-stats.jsonl") for side in ("proxy", "cache")}
        cache = self.cache("--oneshot", "--stats-file", stats["cache"], *cacheArgs)
        proxy = self.proxy("--oneshot", "--stats-file", stats["proxy"], *proxyArgs)
        images = self.images()
        restored = self.migrate(images, sorted(images), proxy, cache)
        self.assertEqual(sorted(restored), sorted(images))
        for name, content in images.items():
            self.assertTrue(restored[name] == content, name)
        records = {}
        for side, path in stats.items():
            with open(path) as f:
                [records[side]] = [json.loads(line) for line in f]
        total = sum(len(c) for c in images.values())
        self.assertEqual(records["proxy"]["bytes"], records["cache"]["bytes"])
        self.assertEqual(records["proxy"]["link_bytes"], records["cache"]["link_bytes"])
        self.assertGreaterEqual(records["proxy"]["bytes"], total)
        return proxy.log(), records["proxy"]["ratio"]

    def test_zstd(self) -> None:
        """
        C{--compress zstd}: every chunk that shrinks goes compressed.
        """
        proxyLog, ratio = self.check(("--compress", "zstd"))
        self.assertIn("link compression zstd (--compress zstd)", proxyLog)
        self.assertGreater(ratio, 3)

    def test_lz4OverTLS(self) -> None:
        """
        C{--compress lz4} over mutual TLS.
        """
        ca = Authority(self.base, "e2e")
        proxyLog, ratio = self.check(
            ("--compress", "lz4", *_options(ca.issue("proxy", ["proxy.example"]))),
            tuple(_options(ca.issue("cache", ["127.0.0.1"]))),
        )
        self.assertIn("link compression lz4", proxyLog)
        self.assertGreater(ratio, 2)

    def test_auto(self) -> None:
        """
        The default, C{auto}, says what it agreed on.
        """
        proxyLog, _ = self.check(())
        self.assertIn("link compression zstd or lz4 when it pays (--compress auto", proxyLog)

    def test_none(self) -> None:
        """
        C{--compress none}.
        """
        proxyLog, ratio = self.check(("--compress", "none"))
        self.assertIn("link compression none (--compress none)", proxyLog)
        self.assertEqual(ratio, 1.0)
