"""
The public embedding API, used as the README shows: L{imgrelay.ProxyService}
and L{imgrelay.CacheService}, each built from its config, added to an
application's service tree; and the deprecated functions of 0.1.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

import imgrelay
from imgrelay.testing import criu


class EmbeddingTests(TestCase):
    """
    Both services run inside another application's service tree.
    """

    timeout = 60

    async def test_readmeExample(self) -> None:
        """
        A cache and a proxy made by the public functions, started by their
        parent service, migrate images, report the session to their
        observers, and stop with it.
        """
        self.assertEqual(
            sorted(imgrelay.__all__),
            sorted(n for n in imgrelay.__all__ if hasattr(imgrelay, n)),
        )
        dump, restore = tempfile.mkdtemp(), tempfile.mkdtemp()
        application = MultiService()
        cache = imgrelay.CacheService(imgrelay.CacheConfig(imagesDir=restore, listen="tcp:0:interface=127.0.0.1"), reactor)
        released: list[Any] = []
        cache.addSessionObserver(released.append)
        cache.setServiceParent(application)
        application.startService()
        self.addCleanup(application.stopService)
        port = (await cache.linkAddress()).port  # type: ignore[attr-defined]
        proxy = imgrelay.ProxyService(
            imgrelay.ProxyConfig(imagesDir=dump, connect=f"tcp:host=127.0.0.1:port={port}", sessionName="web-1"), reactor
        )
        outcomes: list[Any] = []
        proxy.addSessionObserver(outcomes.append)
        proxy.setServiceParent(application)

        def migrate() -> Any:
            d = criu.StreamDumper(os.path.join(dump, "streamer-capture.sock"))
            d.send("inventory.img", b"inventory")
            d.close()
            r = criu.StreamRestorer(os.path.join(restore, "streamer-serve.sock"))
            content = r.fetch("inventory.img")
            r.close()
            return content

        self.assertEqual(await deferToThread(migrate), b"inventory")
        for _ in range(3000):
            if outcomes and released:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertIsInstance(outcomes[0], imgrelay.SessionOutcome)
        self.assertEqual((outcomes[0].name, outcomes[0].images), ("web-1", 1))
        self.assertEqual(released[0].state, imgrelay.SessionState.COMPLETE)
