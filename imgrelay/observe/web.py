# -*- test-case-name: tests.observe.test_web -*-
"""
C{--http}: the status document at C{/status} and Prometheus metrics at
C{/metrics}, read from a daemon's L{DaemonStats}.

This module is imported only when C{--http} is given, and it imports
C{prometheus_client} only then.

Why not C{prometheus_client.twisted.MetricsResource}: it runs the exposition
as a WSGI application in the reactor's thread pool, so the collector would
read the statistics from another thread while the reactor changes them, and
it imports the global reactor when imported. Producing a few lines of text
is quicker than handing them to a thread: this resource renders on the
reactor thread, from a registry of the daemon's own.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from imgrelay.observe.stats import DaemonStats


class StatsCollector:
    """
    A C{prometheus_client} custom collector: each scrape reads the daemon's
    statistics.
    """

    def __init__(self, stats: DaemonStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        """
        @return: The metric families: bytes (of images, and on the links),
            images, sessions by outcome and
            errors by kind (counters); active sessions and bytes held
            (gauges).
        """
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._stats
        stats.refresh()
        yield CounterMetricFamily(
            "imgrelay_bytes_total", "Bytes of image content moved over links.", value=stats.bytes
        )
        yield CounterMetricFamily(
            "imgrelay_link_bytes_total",
            "What that image content came to on the links, compressed or not.", value=stats.linkBytes,
        )
        yield CounterMetricFamily("imgrelay_images_total", "Images verified.", value=stats.images)
        sessions = CounterMetricFamily("imgrelay_sessions_total", "Sessions ended, by outcome.", labels=["outcome"])
        for outcome, count in stats.outcomes.items():
            sessions.add_metric([outcome], count)
        yield sessions
        errors = CounterMetricFamily("imgrelay_errors_total", "Failed sessions, by kind of error.", labels=["kind"])
        for kind, count in stats.errors.items():
            errors.add_metric([kind], count)
        yield errors
        yield GaugeMetricFamily("imgrelay_active_sessions", "Sessions in progress.", value=len(stats.active))
        yield GaugeMetricFamily("imgrelay_bytes_held", "Bytes of images held in memory.", value=stats.held())


class StatusResource(Resource):
    """
    C{GET /status}: the status document as JSON.
    """

    isLeaf = True

    def __init__(self, stats: DaemonStats) -> None:
        Resource.__init__(self)
        self._stats = stats

    def render_GET(self, request: Request) -> bytes:
        """
        @return: The document, one JSON object.
        """
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self._stats.status()).encode() + b"\n"


class MetricsResource(Resource):
    """
    C{GET /metrics}: the Prometheus text format, from a registry of this
    daemon's own (not C{prometheus_client}'s global one).
    """

    isLeaf = True

    def __init__(self, stats: DaemonStats) -> None:
        from prometheus_client import CollectorRegistry

        Resource.__init__(self)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StatsCollector(stats))

    def render_GET(self, request: Request) -> bytes:
        """
        @return: Every metric, in the text format.
        """
        from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

        request.setHeader(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode())
        return generate_latest(self.registry)


class _QuietSite(Site):
    """
    A site that writes no access log line per request (a scraper asks every
    few seconds).
    """

    def log(self, request: http.Request) -> None:
        """
        Log nothing.
        """


def statusSite(stats: DaemonStats, reactor: Any) -> Site:
    """
    @return: The HTTP site serving C{/status} and C{/metrics}.
    """
    root = Resource()
    root.putChild(b"status", StatusResource(stats))
    root.putChild(b"metrics", MetricsResource(stats))
    site = _QuietSite(root, reactor=reactor)
    site.noisy = False
    return site
