"""
Tests for L{imgrelay.observe.web}: the C{/status} and C{/metrics} resources,
rendered without a network (see C{tests/test_observability.py} for real
HTTP).
"""

from __future__ import annotations

import json

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from imgrelay.observe.stats import DaemonStats
from imgrelay.observe.web import MetricsResource, StatusResource, statusSite


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    @return: Every sample of a Prometheus text exposition, by name and
        labels.
    """
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class ResourceTests(SynchronousTestCase):
    """
    Tests for L{StatusResource} and L{MetricsResource}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.stats = DaemonStats("cache", self.clock.seconds, "0.1.0", held=lambda: 1234)
        done = self.stats.begin("a", "receiving")
        self.stats.imageVerified(done, "", 100)
        self.stats.complete(done, bytes=100)
        self.stats.fail(self.stats.begin("b", "receiving"), "image refused: checksum mismatch", "checksum")
        self.live = self.stats.begin("c", "receiving", lambda: (50, 1))

    def test_status(self) -> None:
        """
        C{/status} is the status document as JSON.
        """
        request = DummyRequest([b""])
        body = StatusResource(self.stats).render_GET(request)  # type: ignore[arg-type]
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        document = json.loads(body)
        self.assertEqual(document, json.loads(json.dumps(self.stats.status())))
        self.assertEqual([s["name"] for s in document["sessions"]], ["a", "b", "c"])

    def test_metrics(self) -> None:
        """
        C{/metrics} gives the counters and gauges in the Prometheus text
        format: bytes and images, sessions by outcome, errors by kind,
        active sessions and bytes held.
        """
        request = DummyRequest([b""])
        body = MetricsResource(self.stats).render_GET(request)  # type: ignore[arg-type]
        (contentType,) = request.responseHeaders.getRawHeaders(b"content-type")
        self.assertTrue(contentType.startswith(b"text/plain"))
        got = samples(body.decode())
        self.assertEqual(
            got,
            {
                ("imgrelay_bytes_total", ()): 150.0,
                ("imgrelay_link_bytes_total", ()): 0.0,
                ("imgrelay_images_total", ()): 1.0,
                ("imgrelay_sessions_total", (("outcome", "complete"),)): 1.0,
                ("imgrelay_sessions_total", (("outcome", "failed"),)): 1.0,
                ("imgrelay_errors_total", (("kind", "checksum"),)): 1.0,
                ("imgrelay_errors_total", (("kind", "protocol"),)): 0.0,
                ("imgrelay_errors_total", (("kind", "other"),)): 0.0,
                ("imgrelay_active_sessions", ()): 1.0,
                ("imgrelay_bytes_held", ()): 1234.0,
            },
        )

    def test_ownRegistry(self) -> None:
        """
        Each resource has a registry of its own: the global one does not
        get imgrelay's metrics, and two daemons in one process do not clash.
        """
        first = MetricsResource(self.stats)
        second = MetricsResource(DaemonStats("proxy", self.clock.seconds))
        self.assertIsNot(first.registry, second.registry)
        self.assertIsNone(REGISTRY.get_sample_value("imgrelay_bytes_total"))
        self.assertEqual(first.registry.get_sample_value("imgrelay_bytes_total"), 150.0)
        self.assertEqual(second.registry.get_sample_value("imgrelay_bytes_total"), 0.0)

    def test_site(self) -> None:
        """
        The site serves both resources under their names, and says
        nothing as it starts and stops.
        """
        site = statusSite(self.stats, self.clock)
        self.assertIsInstance(site.resource.getStaticEntity(b"status"), StatusResource)  # type: ignore[attr-defined]
        self.assertIsInstance(site.resource.getStaticEntity(b"metrics"), MetricsResource)  # type: ignore[attr-defined]
        self.assertFalse(site.noisy)
