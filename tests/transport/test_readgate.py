"""
Tests for L{imgrelay.transport.readgate}.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.transport.readgate import ReadGate


class _Receiver:
    connected = 1

    def __init__(self) -> None:
        self.calls: list[str] = []

    def stopReading(self) -> None:
        self.calls.append("stop")

    def startReading(self) -> None:
        self.calls.append("start")


class ReadGateTests(SynchronousTestCase):
    """
    Read while nothing holds.
    """

    def test_transport(self) -> None:
        """
        Without a receiver, the transport is paused at the first hold and
        resumed at the last release; a release of what does not hold does
        nothing.
        """
        transport = StringTransport()
        gate = ReadGate()
        gate.attach(transport, None)
        gate.hold("memory")
        gate.hold("decoding")
        self.assertEqual(transport.producerState, "paused")
        gate.release("memory")
        self.assertEqual(transport.producerState, "paused")
        self.assertFalse(gate.reading)
        gate.release("decoding")
        self.assertEqual(transport.producerState, "producing")
        self.assertTrue(gate.reading)
        gate.release("decoding")
        self.assertEqual(transport.producerState, "producing")

    def test_receiver(self) -> None:
        """
        With a receiver, it is the receiver that stops and starts; a
        receiver no longer connected is not started again.
        """
        receiver = _Receiver()
        gate = ReadGate()
        gate.attach(StringTransport(), receiver)  # type: ignore[arg-type]
        gate.hold("a")
        gate.hold("a")
        gate.release("a")
        receiver.connected = 0
        gate.hold("b")
        gate.release("b")
        self.assertEqual(receiver.calls, ["stop", "start", "stop"])
