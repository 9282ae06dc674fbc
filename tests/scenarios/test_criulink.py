"""
A CRIU-format link end to end: L{imgrelay.proxy.criulink}'s sender talking
to L{imgrelay.cache.criulink}'s receiver through L{iosim}.
"""

from __future__ import annotations


from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.wire.link import APPEND, REPLACE
from imgrelay.proxy.session import ProxySession
from imgrelay.core.store import SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.cache.criulink import CriuLinkReceiver
from imgrelay.proxy.criulink import CriuLinkSender

from tests.wire.test_criulink import PAGES

class CriuLinkPairTests(SynchronousTestCase):
    """
    A L{CriuLinkSender} talking to a L{CriuLinkReceiver} through L{iosim}.
    """

    def test_wholeSession(self) -> None:
        """
        A L{ProxySession} with interleaved, empty, replaced and appended
        images and two snapshot pushes completes on both sides, and the
        cache holds byte-identical images and the snapshot list.
        """
        clock = Clock()
        slot = SessionSlot(clock=clock.seconds)
        session = ProxySession("mig", clock.seconds)
        peer = IPv4Address("TCP", "10.0.0.1", 4242)
        sender, receiver, pump = connectedServerAndClient(
            lambda: CriuLinkReceiver(slot),
            lambda: CriuLinkSender(session),
            serverTransportFactory=lambda p: FakeTransport(p, True, peerAddress=peer),
        )
        session.pushSnapshot("/mig/d1")
        pages = session.openImage("/mig/d1", "pages-1.img")
        core = session.openImage("/mig/d1", "core-1.img")
        for start in range(0, len(PAGES), 40000):
            pages.write(PAGES[start : start + 40000])
            pump.pump()
        core.write(b"core")
        core.close()
        pages.close()
        session.openImage("/mig/d1", "empty.img").close()
        pump.flush()
        session.pushSnapshot("/mig/d2")
        for mode, content in ((REPLACE, b"v1"), (REPLACE, b"v2"), (APPEND, b"+3")):
            out = session.openImage("/mig/d2", "inventory.img", mode)
            out.write(content)
            out.close()
        session.finish()
        pump.flush()
        outcome = self.successResultOf(session.result)
        self.assertEqual((outcome.images, outcome.bytes), (4, len(PAGES) + 4 + 0 + 4))
        cache = slot.current
        self.assertEqual(cache.state, SessionState.COMPLETE)
        self.assertEqual(cache.name, "criu-link:10.0.0.1:4242")
        self.assertEqual(
            {key: i.data.tobytes() for key, i in cache.images.items()},
            {
                ("/mig/d1", "pages-1.img"): PAGES,
                ("/mig/d1", "core-1.img"): b"core",
                ("/mig/d1", "empty.img"): b"",
                ("/mig/d2", "inventory.img"): b"v2+3",
            },
        )
        self.assertEqual(self.successResultOf(cache.waitSnapshots()), ["/mig/d1", "/mig/d2"])
        self.assertTrue(sender.transport.disconnected)  # type: ignore[union-attr]
        self.assertIs(receiver.session, cache)
