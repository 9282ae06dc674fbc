"""
Tests for L{imgrelay.proxy.verdict}: the source's verdict link, over
string transports and a clock.
"""

from __future__ import annotations


from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from imgrelay.core.errors import SessionError
from imgrelay.proxy.verdict import VerdictClient
from imgrelay.wire.framing import HeaderReceived
from imgrelay.wire.link import CacheMessage, frame, proxyMessageFramer
from imgrelay.wire.pb import link_pb2


@implementer(IStreamClientEndpoint)
class _Endpoint:
    def __init__(self) -> None:
        self.connections: list[tuple[IProtocol, StringTransport]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


def _sent(transport: StringTransport) -> list[str]:
    return [e.message.WhichOneof("kind") for e in proxyMessageFramer().feed(transport.value())
            if isinstance(e, HeaderReceived)]


class VerdictClientTests(SynchronousTestCase):
    """
    Hear the verdict, answer it, again after a lost link; give up in time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = _Endpoint()
        self.client = VerdictClient(self.endpoint, "web-1", b"t" * 16, self.clock, 5, lambda attempt: 0.5)
        self.client.start()

    def tell(self, message: CacheMessage) -> None:
        protocol, _ = self.endpoint.connections[-1]
        protocol.dataReceived(frame(message))

    def test_hello(self) -> None:
        """
        A version 2 hello for the verdict link, with the session's token.
        """
        _, transport = self.endpoint.connections[0]
        [hello] = [e.message.hello for e in proxyMessageFramer().feed(transport.value())
                   if isinstance(e, HeaderReceived)]
        self.assertEqual((hello.version, hello.session, hello.resume_token, hello.verdict),
                         (2, "web-1", b"t" * 16, True))

    def test_commit(self) -> None:
        """
        The verdict, then a commit and its resolution; then it stops.
        """
        self.tell(CacheMessage(accept=link_pb2.Accept(restores=True)))
        self.tell(CacheMessage(verdict=link_pb2.Verdict(restored=True, pid=9)))
        self.assertEqual(self.successResultOf(self.client.verdict).pid, 9)
        resolved = self.client.answer(True)
        self.assertEqual(_sent(self.endpoint.connections[-1][1]), ["hello", "commit"])
        self.tell(CacheMessage(resolved=link_pb2.Resolved(running=True, seconds=2.0)))
        self.assertTrue(self.successResultOf(resolved).running)
        self.clock.advance(60)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_answerAgainAfterLoss(self) -> None:
        """
        An answer given while the link is down goes out on the next one,
        after its hello.
        """
        self.tell(CacheMessage(verdict=link_pb2.Verdict(restored=True, pid=9)))
        protocol, _ = self.endpoint.connections[-1]
        protocol.connectionLost(Failure(ConnectionLost()))
        resolved = self.client.answer(True)
        self.clock.advance(0.5)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertEqual(_sent(self.endpoint.connections[-1][1]), ["hello", "commit"])
        self.tell(CacheMessage(resolved=link_pb2.Resolved(running=True)))
        self.successResultOf(resolved)

    def test_giveUp(self) -> None:
        """
        Connections that the cache never answers (taken and dropped) do not
        keep it waiting: it gives up after its time, naming it.
        """
        for _ in range(9):
            self.assertNoResult(self.client.verdict)
            protocol, _ = self.endpoint.connections[-1]
            protocol.connectionLost(Failure(ConnectionLost("reset")))
            self.clock.advance(0.5)
        self.clock.advance(0.5)
        failure = self.failureResultOf(self.client.verdict, SessionError)
        self.assertIn("no verdict link to the cache for 5 s", str(failure.value))
        self.assertIn("reset", str(failure.value))

    def test_refused(self) -> None:
        """
        A refusal fails it at once.
        """
        self.tell(CacheMessage(refuse=link_pb2.Refuse(reason="no restore of session 'web-1' here")))
        failure = self.failureResultOf(self.client.verdict, SessionError)
        self.assertIn("no restore of session", str(failure.value))

    def test_unresolvedAnswerFails(self) -> None:
        """
        An answer given and never resolved fails once it gives up.
        """
        self.tell(CacheMessage(verdict=link_pb2.Verdict(restored=True, pid=9)))
        resolved = self.client.answer(True)
        self.endpoint.connections[-1][0].connectionLost(Failure(ConnectionLost()))
        self.endpoint.connect = lambda factory: Deferred()  # type: ignore[method-assign]
        self.clock.advance(6)
        self.failureResultOf(resolved, SessionError)
