"""
Helpers for the tests of the cache's end of the link: the proxy's messages
as bytes, and a base for tests that drive a L{CacheLinkProtocol} with them
over a L{StringTransport}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from crc32c import crc32c
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.core.integrity import ManifestEntry, manifestDigest
from imgrelay.core.store import Session, SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.wire.framing import HeaderReceived
from imgrelay.wire.link import VERSION, CacheMessage, ProxyMessage, cacheMessageFramer, chunkHeader, frame
from imgrelay.wire.pb import link_pb2

#: An image as the tests send it: (snapshot id, name, content).
Sent = tuple[str, str, bytes]


def hello(session: str = "mig", version: int = VERSION) -> bytes:
    """
    @return: A framed Hello.
    """
    return frame(ProxyMessage(hello=link_pb2.Hello(version=version, session=session)))


def imageOpen(image: int, name: str, snapshotId: str = "", mode: int = link_pb2.CREATE) -> bytes:
    """
    @return: A framed ImageOpen.
    """
    return frame(
        ProxyMessage(open=link_pb2.ImageOpen(image=image, name=name, snapshot_id=snapshotId, mode=mode))  # type: ignore[arg-type]
    )


def chunk(image: int, data: bytes) -> bytes:
    """
    @return: A chunk header and its payload.
    """
    return chunkHeader(image, len(data)) + data


def imageClose(image: int, data: bytes, size: Optional[int] = None, crc: Optional[int] = None) -> bytes:
    """
    @return: A framed ImageClose for an image whose content is C{data},
        unless C{size} or C{crc} say otherwise.
    """
    return frame(
        ProxyMessage(
            close=link_pb2.ImageClose(
                image=image,
                size=len(data) if size is None else size,
                crc32c=crc32c(data) if crc is None else crc,
            )
        )
    )


def done(
    images: Sequence[Sent],
    count: Optional[int] = None,
    size: Optional[int] = None,
    digest: Optional[bytes] = None,
) -> bytes:
    """
    @return: A framed Done that describes C{images}, unless C{count},
        C{size} or C{digest} say otherwise.
    """
    entries = [ManifestEntry(s, n, len(c), crc32c(c)) for (s, n, c) in images]
    return frame(
        ProxyMessage(
            done=link_pb2.Done(
                images=len(images) if count is None else count,
                bytes=sum(len(c) for (_, _, c) in images) if size is None else size,
                manifest_sha256=manifestDigest(entries) if digest is None else digest,
            )
        )
    )


def abort(reason: str) -> bytes:
    """
    @return: A framed Abort.
    """
    return frame(ProxyMessage(abort=link_pb2.Abort(reason=reason)))


def wholeImage(image: int, name: str, content: bytes, snapshotId: str = "") -> bytes:
    """
    @return: Open, one chunk and close of an image.
    """
    return imageOpen(image, name, snapshotId) + chunk(image, content) + imageClose(image, content)


if TYPE_CHECKING:
    _MixinBase = SynchronousTestCase
else:
    _MixinBase = object


class LinkTestMixin(_MixinBase):
    """
    A base for tests of L{CacheLinkProtocol} whatever way the bytes arrive;
    a subclass says how in L{feed}.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        """
        Deliver C{data} from the proxy to C{protocol}.
        """
        raise NotImplementedError()

    # Set up and helpers.

    def setUp(self) -> None:
        self.clock = Clock()
        self.consumed: list[Session] = []
        self.slot = SessionSlot(self.consumed.append, self.clock.seconds)
        self.logs = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]  # typed for TestCase only
        )
        self.protocol, self.transport = self.connect()

    def connect(self) -> tuple[CacheLinkProtocol, StringTransport]:
        """
        Make a link protocol on the slot, connected to a string transport.
        """
        protocol = CacheLinkProtocol(self.slot, self.clock.seconds)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def deliver(self, *pieces: bytes) -> None:
        """
        The proxy sends C{pieces} on the main link.
        """
        self.feed(self.protocol, b"".join(pieces))

    def replies(self, transport: Optional[StringTransport] = None) -> list[CacheMessage]:
        """
        @return: Every message the cache wrote, which must be whole.
        """
        data = (transport or self.transport).value()
        framer = cacheMessageFramer()
        messages = [e.message for e in framer.feed(data) if isinstance(e, HeaderReceived)]
        self.assertTrue(framer.atBoundary)
        return messages

    def kinds(self, transport: Optional[StringTransport] = None) -> list[str]:
        """
        @return: The kinds of every message the cache wrote.
        """
        return [m.WhichOneof("kind") for m in self.replies(transport)]

    @property
    def session(self) -> Session:
        """
        The session the main link fills.
        """
        session = self.protocol.state.session
        assert session is not None
        return session

    def errorsLogged(self) -> list[str]:
        """
        @return: The text of every error logged.
        """
        return [formatEvent(e) for e in self.logs if e["log_level"] == LogLevel.error]

    def assertErrorLogged(self, text: str) -> None:
        """
        An error whose text holds C{text} was logged.
        """
        errors = self.errorsLogged()
        self.assertTrue(any(text in e for e in errors), f"{text!r} not in {errors!r}")

    def assertRefused(self, text: str) -> None:
        """
        The link was refused before any session: a Refuse naming C{text}
        was sent, the connection closes, the error is logged, and the slot
        still waits for a proxy.
        """
        messages = self.replies()
        self.assertEqual([m.WhichOneof("kind") for m in messages], ["refuse"])
        self.assertIn(text, messages[-1].refuse.reason)
        self.assertTrue(self.transport.disconnecting)
        self.assertErrorLogged(text)
        self.assertIsNone(self.protocol.state.session)
        self.assertIs(self.slot.current.state, SessionState.WAITING)

    def assertSessionFailed(self, text: str) -> None:
        """
        The session failed: a SessionFailed naming C{text} was the last
        message, the connection closes, the error is logged, and the session
        is failed with that reason, holding no image.
        """
        messages = self.replies()
        self.assertEqual(messages[-1].WhichOneof("kind"), "failed")
        self.assertIn(text, messages[-1].failed.reason)
        self.assertTrue(self.transport.disconnecting)
        self.assertErrorLogged(text)
        self.assertIs(self.session.state, SessionState.FAILED)
        self.assertIn(text, self.session.failure or "")
        self.assertEqual(self.session.failureKind, "protocol")
        self.assertEqual(self.session.images, {})

    def assertImageRefused(self, image: int, text: str) -> None:
        """
        An image was refused: an ImageRefused naming C{text} was the last
        message, the connection closes, and the session failed.
        """
        messages = self.replies()
        last = messages[-1]
        self.assertEqual(last.WhichOneof("kind"), "image_refused")
        self.assertEqual(last.image_refused.image, image)
        self.assertIn(text, last.image_refused.reason)
        self.assertTrue(self.transport.disconnecting)
        self.assertErrorLogged(text)
        self.assertIs(self.session.state, SessionState.FAILED)
        self.assertIn(text, self.session.failure or "")
        self.assertEqual(self.session.failureKind, "checksum")
