"""
End-to-end over mutual TLS: the real twistd plugins on 127.0.0.1.
"""

from __future__ import annotations

from imgrelay.testing import traces
from imgrelay.transport.tls import TLSFiles
from tests.e2e.test_e2e import _DaemonCase
from tests.transport.test_tls import Authority


def _options(files: TLSFiles) -> list[str]:
    return ["--tls-cert", files.cert, "--tls-key", files.key, "--tls-ca", files.ca]


class TLSEndToEndTests(_DaemonCase):
    """
    C{--oneshot} daemons over TLS end as they do over TCP.
    """

    def test_oneshotExitsAfterTLSClose(self) -> None:
        """
        Both oneshot daemons exit 0 once the session is restored, at once:
        the proxy closes its TLS link properly (its close answered) before
        it exits, so the cache, seeing a clean close after its
        confirmation, waits for no resume. The cache's C{--resume-timeout}
        is longer than the wait, so a cache left waiting fails the test.
        """
        ca = Authority(self.base, "e2e")
        cache = self.cache("--oneshot", "--resume-timeout", "600", "--idle-timeout", "600",
                           *_options(ca.issue("cache", ["127.0.0.1"])))
        proxy = self.proxy("--oneshot", *_options(ca.issue("proxy", ["proxy.example"])))
        images = {"core-1.img": b"c" * 1000, "pages-1.img": traces.patternBytes("pages-1.img", 8 << 20)}
        restored = self.migrate(images, sorted(images), proxy, cache)
        self.assertTrue(restored == images, sorted(restored))
        self.assertIn("TLS", proxy.log())
        self.assertNotIn("lost", cache.log())
