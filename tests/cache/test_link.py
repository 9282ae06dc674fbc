"""
Tests for L{imgrelay.cache.link}: the cache's end of the link, driven with
the proxy's bytes over a L{StringTransport}, both all at once and one byte at
a time.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional, Sequence

from crc32c import crc32c
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cache.link import CacheLinkFactory, CacheLinkProtocol
from imgrelay.wire.framing import DEFAULT_MAX_HEADER, HeaderReceived
from imgrelay.core.integrity import ManifestEntry, manifestDigest
from imgrelay.wire.link import (
    MAX_CHUNK,
    VERSION,
    CacheMessage,
    ProxyMessage,
    cacheMessageFramer,
    chunkHeader,
    frame,
)
from imgrelay.wire.pb import link_pb2
from imgrelay.core.store import Session, SessionState
from imgrelay.core.slot import SessionSlot

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


class _CacheLinkMixin(_MixinBase):
    """
    Tests of L{CacheLinkProtocol} whatever way the bytes arrive; a subclass
    says how in L{feed}.
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

    # The happy path.

    def test_helloAccepted(self) -> None:
        """
        A hello of the right version is accepted: the link claims the slot's
        session under the name given.
        """
        self.deliver(hello("mig"))
        self.assertEqual(self.kinds(), ["accept"])
        self.assertFalse(self.transport.disconnecting)
        self.assertIs(self.session, self.slot.current)
        self.assertEqual(self.session.name, "mig")
        self.assertIs(self.session.state, SessionState.RECEIVING)
        self.assertEqual(self.errorsLogged(), [])

    def test_imageVerified(self) -> None:
        """
        An image opened, sent in several chunks and closed with the right
        size and checksum is acknowledged and verified in the session with
        exactly the bytes sent.
        """
        content = bytes(range(256)) * 10
        self.deliver(
            hello(),
            imageOpen(7, "pages-1.img", "snap"),
            chunk(7, content[:100]),
            chunk(7, content[100:101]),
            chunk(7, content[101:]),
            imageClose(7, content),
        )
        messages = self.replies()
        self.assertEqual([m.WhichOneof("kind") for m in messages], ["accept", "ack"])
        self.assertEqual(messages[1].ack.image, 7)
        image = self.session.images[("snap", "pages-1.img")]
        self.assertEqual(image.data.tobytes(), content)
        self.assertEqual(image.size, len(content))
        self.assertEqual(image.crc, crc32c(content))
        self.assertFalse(self.transport.disconnecting)

    def test_waiterWoken(self) -> None:
        """
        A restore waiting for an image before the link started gets it once
        it is verified.
        """
        restore = self.slot.attachRestore()
        d = restore.waitImage("", "a.img")
        self.deliver(hello(), imageOpen(1, "a.img"), chunk(1, b"abc"))
        self.assertNoResult(d)
        self.deliver(imageClose(1, b"abc"))
        image = self.successResultOf(d)
        assert image is not None
        self.assertEqual(image.data.tobytes(), b"abc")

    def test_interleavedImages(self) -> None:
        """
        Chunks of two open images may interleave; each image gets its own
        bytes, and each is acknowledged when it closes.
        """
        a = b"A" * 300 + b"a"
        b = b"B" * 200 + b"b"
        self.deliver(
            hello(),
            imageOpen(1, "a.img"),
            imageOpen(2, "b.img"),
            chunk(1, a[:100]),
            chunk(2, b[:150]),
            chunk(1, a[100:]),
            chunk(2, b[150:]),
            imageClose(2, b),
            imageClose(1, a),
        )
        messages = self.replies()
        self.assertEqual([m.WhichOneof("kind") for m in messages], ["accept", "ack", "ack"])
        self.assertEqual([messages[1].ack.image, messages[2].ack.image], [2, 1])
        self.assertEqual(self.session.images[("", "a.img")].data.tobytes(), a)
        self.assertEqual(self.session.images[("", "b.img")].data.tobytes(), b)

    def test_emptyImage(self) -> None:
        """
        An image with no chunk at all is verified, empty.
        """
        self.deliver(hello(), imageOpen(1, "empty.img"), imageClose(1, b""))
        self.assertEqual(self.kinds(), ["accept", "ack"])
        image = self.session.images[("", "empty.img")]
        self.assertEqual(image.size, 0)
        self.assertEqual(image.data.tobytes(), b"")

    def test_emptyChunk(self) -> None:
        """
        A chunk of no bytes is harmless.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), chunk(1, b""), chunk(1, b"x"), imageClose(1, b"x"))
        self.assertEqual(self.kinds(), ["accept", "ack"])
        self.assertEqual(self.session.images[("", "a.img")].data.tobytes(), b"x")

    def test_sameNameOtherSnapshot(self) -> None:
        """
        The same image name in two snapshots makes two images.
        """
        self.deliver(hello(), wholeImage(1, "a.img", b"one", "s1"), wholeImage(2, "a.img", b"two", "s2"))
        self.assertEqual(self.kinds(), ["accept", "ack", "ack"])
        self.assertEqual(self.session.images[("s1", "a.img")].data.tobytes(), b"one")
        self.assertEqual(self.session.images[("s2", "a.img")].data.tobytes(), b"two")

    def test_chunkOfMaxSizeAccepted(self) -> None:
        """
        A chunk header announcing exactly L{MAX_CHUNK} bytes is accepted.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), chunkHeader(1, MAX_CHUNK))
        self.assertEqual(self.kinds(), ["accept"])
        self.assertFalse(self.transport.disconnecting)

    def test_done(self) -> None:
        """
        A done whose counts and digest match the verified images is answered
        with done_ok and completes the session; restores waiting for images
        that never came are told they do not exist.
        """
        sent = [("", "a.img", b"aaaa"), ("s", "b.img", b"bb"), ("", "empty.img", b"")]
        restore = self.slot.attachRestore()
        missing = restore.waitImage("", "missing.img")
        self.clock.advance(1)
        self.deliver(hello(), *[wholeImage(i, n, c, s) for i, (s, n, c) in enumerate(sent, 1)])
        self.clock.advance(2)
        self.deliver(done(sent))
        self.assertEqual(self.kinds(), ["accept", "ack", "ack", "ack", "done_ok"])
        self.assertIs(self.session.state, SessionState.COMPLETE)
        self.assertEqual(self.session.started, 1)
        self.assertEqual(self.session.ended, 3)
        self.assertIsNone(self.successResultOf(missing))
        self.assertEqual(self.session.bytes, 6)
        self.assertEqual(self.errorsLogged(), [])

    def test_doneNoImages(self) -> None:
        """
        A session of no image at all completes.
        """
        self.deliver(hello(), done([]))
        self.assertEqual(self.kinds(), ["accept", "done_ok"])
        self.assertIs(self.session.state, SessionState.COMPLETE)

    def test_lostAfterDone(self) -> None:
        """
        The link closing after done_ok leaves the session complete with its
        images.
        """
        sent = [("", "a.img", b"aaaa")]
        self.deliver(hello(), wholeImage(1, "a.img", b"aaaa"), done(sent))
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.session.state, SessionState.COMPLETE)
        self.assertEqual(self.session.images[("", "a.img")].data.tobytes(), b"aaaa")
        self.assertEqual(self.errorsLogged(), [])

    # Refused links.

    def test_wrongVersion(self) -> None:
        """
        A hello of another version is refused.
        """
        self.deliver(hello(version=VERSION + 1))
        self.assertRefused(f"version {VERSION + 1} is not supported")

    def test_emptySessionName(self) -> None:
        """
        A hello naming no session is refused.
        """
        self.deliver(hello(""))
        self.assertRefused("names no session")

    def test_sessionNameNul(self) -> None:
        """
        A hello whose session name holds a NUL is refused.
        """
        self.deliver(hello("a\0b"))
        self.assertRefused("NUL")

    def test_firstNotHello(self) -> None:
        """
        A link that does not begin with hello is refused.
        """
        self.deliver(imageOpen(1, "a.img"))
        self.assertRefused("expected hello, got open")

    def test_malformedBeforeHello(self) -> None:
        """
        Bytes that are not a link message, first thing, are refused.
        """
        self.deliver(struct.pack("!I", 3) + b"\xff\xff\xff")
        self.assertRefused("undecodable header")

    def test_oversizedBeforeHello(self) -> None:
        """
        A length prefix over 64 KiB first thing is refused without waiting
        for the header.
        """
        self.deliver(struct.pack("!I", DEFAULT_MAX_HEADER + 1))
        self.assertRefused(f"header of {DEFAULT_MAX_HEADER + 1} bytes")

    def test_secondLinkRefused(self) -> None:
        """
        A second link while the first session is receiving is refused, and
        the first session goes on untouched, even after the second closes.
        """
        self.deliver(hello("mig"), imageOpen(1, "a.img"), chunk(1, b"ab"))
        first = self.session
        protocol2, transport2 = self.connect()
        self.feed(protocol2, hello("mig"))
        messages = self.replies(transport2)
        self.assertEqual([m.WhichOneof("kind") for m in messages], ["refuse"])
        self.assertIn("still in progress", messages[0].refuse.reason)
        self.assertTrue(transport2.disconnecting)
        self.assertIsNone(protocol2.state.session)
        protocol2.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.slot.current, first)
        self.assertIs(first.state, SessionState.RECEIVING)
        self.assertIsNone(first.failure)
        self.deliver(chunk(1, b"c"), imageClose(1, b"abc"), done([("", "a.img", b"abc")]))
        self.assertEqual(self.kinds(), ["accept", "ack", "done_ok"])
        self.assertIs(first.state, SessionState.COMPLETE)

    # Failed sessions.

    def test_malformedHeader(self) -> None:
        """
        Bytes that do not decode as a link message fail the session.
        """
        self.deliver(hello(), struct.pack("!I", 3) + b"\xff\xff\xff")
        self.assertSessionFailed("undecodable header")

    def test_oversizedHeader(self) -> None:
        """
        A length prefix over 64 KiB fails the session.
        """
        self.deliver(hello(), struct.pack("!I", DEFAULT_MAX_HEADER + 1))
        self.assertSessionFailed(f"header of {DEFAULT_MAX_HEADER + 1} bytes")

    def test_unknownMessage(self) -> None:
        """
        An envelope holding no known message fails the session.
        """
        self.deliver(hello(), struct.pack("!I", 0))
        self.assertSessionFailed("unknown or empty link message")

    def test_secondHello(self) -> None:
        """
        A hello during a session fails it.
        """
        self.deliver(hello(), hello())
        self.assertSessionFailed("unexpected hello")

    def test_chunkNotOpen(self) -> None:
        """
        A chunk for an image that was never opened fails the session.
        """
        self.deliver(hello(), chunk(3, b"abc"))
        self.assertSessionFailed("image 3 is not open")

    def test_chunkAfterClose(self) -> None:
        """
        A chunk for an image already closed fails the session.
        """
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), chunk(1, b"d"))
        self.assertSessionFailed("image 1 is not open")

    def test_closeNotOpen(self) -> None:
        """
        A close for an image that was never opened fails the session.
        """
        self.deliver(hello(), imageClose(4, b""))
        self.assertSessionFailed("image 4 is not open")

    def test_chunkOverMax(self) -> None:
        """
        A chunk announcing more than L{MAX_CHUNK} bytes fails the session
        before any of its payload arrives.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), chunkHeader(1, MAX_CHUNK + 1))
        self.assertSessionFailed(f"over {MAX_CHUNK}")

    def test_imageIdReusedAfterClose(self) -> None:
        """
        Opening an image under an id already used on the link fails the
        session, and drops the image verified under it.
        """
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), imageOpen(1, "b.img"))
        self.assertSessionFailed("image id 1 used twice")

    def test_imageIdReusedWhileOpen(self) -> None:
        """
        Opening an image under the id of an image still open fails the
        session.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), imageOpen(1, "b.img"))
        self.assertSessionFailed("image id 1 used twice")

    def _refusedImage(self, close: bytes, text: str) -> None:
        """
        Send an image whose close does not match its content: it is refused,
        the session fails, restores waiting for it are told it does not
        exist, and it is never served.
        """
        restore = self.slot.attachRestore()
        waiting = restore.waitImage("", "b.img")
        waitingOther = restore.waitImage("", "c.img")
        self.deliver(hello(), wholeImage(1, "a.img", b"good"), imageOpen(2, "b.img"), chunk(2, b"data"), close)
        self.assertEqual(self.kinds(), ["accept", "ack", "image_refused"])
        self.assertImageRefused(2, text)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIsNone(self.successResultOf(waitingOther))
        self.assertIsNone(self.successResultOf(restore.waitImage("", "b.img")))
        self.assertIsNone(self.successResultOf(restore.waitImage("", "a.img")))
        self.assertEqual(self.session.images, {})
        # Whatever follows is ignored.
        self.deliver(wholeImage(3, "c.img", b"c"), done([]))
        self.assertEqual(self.kinds(), ["accept", "ack", "image_refused"])
        self.assertIs(self.session.state, SessionState.FAILED)

    def test_sizeMismatch(self) -> None:
        """
        An image whose close announces another size than the bytes received
        is refused and fails the session.
        """
        self._refusedImage(imageClose(2, b"data", size=5), "size mismatch")

    def test_checksumMismatch(self) -> None:
        """
        An image whose close announces another checksum than that of the
        bytes received is refused and fails the session.
        """
        self._refusedImage(imageClose(2, b"data", crc=crc32c(b"datA")), "checksum mismatch")

    def _badName(self, name: str, text: str) -> None:
        """
        Opening an image named C{name} fails the session, naming C{text}.
        """
        self.deliver(hello(), imageOpen(1, name))
        self.assertSessionFailed(text)

    def test_nameEmpty(self) -> None:
        """
        An empty image name fails the session.
        """
        self._badName("", "empty image name")

    def test_nameDot(self) -> None:
        """
        The image name C{.} fails the session.
        """
        self._badName(".", "is not a file name")

    def test_nameDotDot(self) -> None:
        """
        The image name C{..} fails the session.
        """
        self._badName("..", "is not a file name")

    def test_nameSlash(self) -> None:
        """
        An image name holding a C{/} fails the session.
        """
        self._badName("a/b", "holds a '/'")

    def test_nameNul(self) -> None:
        """
        An image name holding a NUL fails the session.
        """
        self._badName("a\0b", "holds a NUL")

    def test_snapshotIdNul(self) -> None:
        """
        A snapshot id holding a NUL fails the session.
        """
        self.deliver(hello(), imageOpen(1, "a.img", "s\0"))
        self.assertSessionFailed("snapshot id")

    def test_sameNameWhileOpen(self) -> None:
        """
        Opening an image a second time in one snapshot while the first is
        still open fails the session.
        """
        self.deliver(hello(), imageOpen(1, "a.img", "s"), imageOpen(2, "a.img", "s"))
        self.assertSessionFailed("'a.img' of snapshot 's' is already being written")

    def test_sameNameAfterVerified(self) -> None:
        """
        Opening an image a second time in one snapshot after the first was
        verified fails the session.
        """
        self.deliver(hello(), wholeImage(1, "a.img", b"x"), imageOpen(2, "a.img"))
        self.assertSessionFailed("'a.img' written twice")

    def test_doneWithImagesOpen(self) -> None:
        """
        A done while images are still open fails the session.
        """
        self.deliver(hello(), imageOpen(1, "b.img"), imageOpen(2, "a.img"), done([]))
        self.assertSessionFailed("done while 2 images are still open: a.img, b.img")

    def test_doneWrongCount(self) -> None:
        """
        A done counting other images than were verified fails the session.
        """
        sent = [("", "a.img", b"abc")]
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), done(sent, count=2))
        self.assertSessionFailed("proxy sent 2 images, cache verified 1")

    def test_doneWrongBytes(self) -> None:
        """
        A done counting other bytes than were verified fails the session.
        """
        sent = [("", "a.img", b"abc")]
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), done(sent, size=4))
        self.assertSessionFailed("proxy sent 4 bytes, cache verified 3")

    def test_doneWrongDigest(self) -> None:
        """
        A done whose manifest digest differs from the verified images' fails
        the session.
        """
        sent = [("", "a.img", b"abc")]
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), done(sent, digest=b"\0" * 32))
        self.assertSessionFailed("manifest digest differs")

    def test_doneOtherImageName(self) -> None:
        """
        A done whose manifest names an image other than the one verified, of
        the same size and checksum, fails the session.
        """
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), done([("", "b.img", b"abc")]))
        self.assertSessionFailed("manifest digest differs")

    def test_abort(self) -> None:
        """
        An abort from the proxy fails the session with the proxy's reason.
        """
        restore = self.slot.attachRestore()
        waiting = restore.waitImage("", "b.img")
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), abort("CRIU died"))
        self.assertSessionFailed("proxy aborted the session: CRIU died")
        self.assertIsNone(self.successResultOf(waiting))

    def test_lostMidImage(self) -> None:
        """
        The link closing in the middle of an image fails the session: its
        waiters are told the image does not exist, the half image never
        appears, and images already verified are dropped.
        """
        restore = self.slot.attachRestore()
        waiting = restore.waitImage("", "b.img")
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), imageOpen(2, "b.img"), chunk(2, b"half"))
        self.protocol.connectionLost(Failure(ConnectionLost("peer went away")))
        self.assertIs(self.session.state, SessionState.FAILED)
        self.assertIn("link lost before the session completed", self.session.failure or "")
        self.assertIn("peer went away", self.session.failure or "")
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIsNone(self.successResultOf(restore.waitImage("", "b.img")))
        self.assertIsNone(self.successResultOf(restore.waitImage("", "a.img")))
        self.assertEqual(self.session.images, {})
        self.assertErrorLogged("link lost before the session completed")

    def test_lostMidChunk(self) -> None:
        """
        The link closing in the middle of a chunk's payload fails the
        session.
        """
        self.deliver(hello(), imageOpen(1, "a.img"), chunkHeader(1, 10), b"12345")
        self.protocol.connectionLost(Failure(ConnectionLost()))
        self.assertIs(self.session.state, SessionState.FAILED)
        self.assertEqual(self.session.failureKind, "other")
        self.assertEqual(self.session.images, {})

    def test_receivedCounted(self) -> None:
        """
        Every payload byte is counted as received by the session as it
        arrives, within a chunk too, and images announced and not closed are
        in flight.
        """
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), imageOpen(2, "b.img"), chunkHeader(2, 10), b"12345")
        self.assertEqual((self.session.received, self.session.inFlight), (8, 1))
        self.deliver(b"67890", imageClose(2, b"1234567890"))
        self.assertEqual((self.session.received, self.session.inFlight), (13, 0))

    def test_lostBeforeHello(self) -> None:
        """
        A link closing before hello touches no session.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.slot.current.state, SessionState.WAITING)
        self.assertEqual(self.errorsLogged(), [])

    def test_messageAfterDoneOk(self) -> None:
        """
        A message after done_ok closes the link with an error logged and no
        answer, and leaves the complete session as it is.
        """
        sent = [("", "a.img", b"abc")]
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"), done(sent))
        self.deliver(imageOpen(2, "b.img"))
        self.assertEqual(self.kinds(), ["accept", "ack", "done_ok"])
        self.assertTrue(self.transport.disconnecting)
        self.assertErrorLogged("open after the final handshake")
        self.assertIs(self.session.state, SessionState.COMPLETE)
        self.assertEqual(self.session.images[("", "a.img")].data.tobytes(), b"abc")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(self.session.state, SessionState.COMPLETE)

    def test_dataAfterFailureIgnored(self) -> None:
        """
        Once a link failed, whatever else arrives on it is ignored.
        """
        self.deliver(hello(), chunk(9, b"x"))
        before = self.transport.value()
        self.deliver(hello(), wholeImage(1, "a.img", b"abc"))
        self.assertEqual(self.transport.value(), before)
        self.assertIs(self.session.state, SessionState.FAILED)

    # Versions of an image and the snapshot list (CRIU's --remote).

    def test_replace(self) -> None:
        """
        An image opened with REPLACE becomes the new version of an image
        already verified; the final handshake counts the last version only.
        """
        self.deliver(
            hello(),
            wholeImage(1, "a.img", b"old content", "s1"),
            imageOpen(2, "a.img", "s1", link_pb2.REPLACE),
            chunk(2, b"new"),
            imageClose(2, b"new"),
            done([("s1", "a.img", b"new")]),
        )
        self.assertEqual(self.kinds(), ["accept", "ack", "ack", "done_ok"])
        self.assertEqual(self.session.images[("s1", "a.img")].data.tobytes(), b"new")
        self.assertEqual(self.session.state, SessionState.COMPLETE)

    def test_append(self) -> None:
        """
        An image opened with APPEND continues the verified one: its close
        gives the size and CRC-32C of the whole, and the image holds old and
        new bytes.
        """
        self.deliver(
            hello(),
            wholeImage(1, "a.img", b"abc"),
            imageOpen(2, "a.img", "", link_pb2.APPEND),
            chunk(2, b"def"),
            imageClose(2, b"abcdef"),
            done([("", "a.img", b"abcdef")]),
        )
        self.assertEqual(self.kinds(), ["accept", "ack", "ack", "done_ok"])
        self.assertEqual(self.session.images[("", "a.img")].data.tobytes(), b"abcdef")

    def test_appendChecksumOfPartRefused(self) -> None:
        """
        An append closed with the size and checksum of the new bytes alone
        is refused: the close must describe the whole image.
        """
        self.deliver(
            hello(),
            wholeImage(1, "a.img", b"abc"),
            imageOpen(2, "a.img", "", link_pb2.APPEND),
            chunk(2, b"def"),
            imageClose(2, b"def"),
        )
        self.assertEqual(self.kinds()[-1], "image_refused")
        self.assertEqual(self.session.state, SessionState.FAILED)

    def test_appendToNothing(self) -> None:
        """
        An append to an image that does not exist creates it.
        """
        self.deliver(hello(), imageOpen(1, "a.img", "", link_pb2.APPEND), chunk(1, b"x"), imageClose(1, b"x"))
        self.assertEqual(self.session.images[("", "a.img")].data.tobytes(), b"x")

    def test_readWaitsForNewVersion(self) -> None:
        """
        A request for an image whose new version is on its way waits for
        that version instead of taking the earlier one.
        """
        self.deliver(hello(), wholeImage(1, "a.img", b"v1"), imageOpen(2, "a.img", "", link_pb2.REPLACE))
        waiting = self.session.waitImage("", "a.img")
        self.assertNoResult(waiting)
        self.deliver(chunk(2, b"v2"), imageClose(2, b"v2"))
        image = self.successResultOf(waiting)
        assert image is not None
        self.assertEqual(image.data.tobytes(), b"v2")

    def test_unknownMode(self) -> None:
        """
        An open mode this version does not know fails the session.
        """
        self.deliver(hello(), imageOpen(1, "a.img", "", 7))
        self.assertSessionFailed("unknown open mode 7")

    def test_snapshotList(self) -> None:
        """
        Snapshot ids pushed on the link make the session's snapshot list, in
        push order, given out once the session is complete.
        """
        push = lambda s: frame(ProxyMessage(snapshot=link_pb2.SnapshotPush(snapshot_id=s)))
        self.deliver(hello(), push("/mig/d1"), push("/mig/d2"))
        listed = self.session.waitSnapshots()
        self.assertNoResult(listed)
        self.deliver(push("/mig/d3"), done([]))
        self.assertEqual(self.successResultOf(listed), ["/mig/d1", "/mig/d2", "/mig/d3"])

    def test_snapshotListOfFailedSession(self) -> None:
        """
        A failed session has no snapshot list.
        """
        self.deliver(hello())
        listed = self.session.waitSnapshots()
        self.deliver(abort("gone"))
        self.assertIsNone(self.successResultOf(listed))


class CacheLinkWholeTests(_CacheLinkMixin, SynchronousTestCase):
    """
    L{CacheLinkProtocol} with everything the proxy sends arriving at once.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        """
        Deliver C{data} in one call.
        """
        protocol.dataReceived(data)


class CacheLinkByteTests(_CacheLinkMixin, SynchronousTestCase):
    """
    L{CacheLinkProtocol} with what the proxy sends arriving one byte at a
    time.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        """
        Deliver C{data} one byte per call.
        """
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])


class ReceiveIntoTests(SynchronousTestCase):
    """
    Payload received straight into an image's memory (the plain TCP path)
    is counted too.
    """

    def test_chunkFilledCounted(self) -> None:
        """
        Bytes received through L{CacheLinkProtocol.payloadTarget} and
        L{CacheLinkProtocol.payloadReceived} count as received, and the
        image they make is verified.
        """
        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(hello() + imageOpen(1, "a.img") + chunkHeader(1, 6))
        session = protocol.state.session
        assert session is not None
        for piece in (b"abcd", b"ef"):
            target = protocol.payloadTarget()
            assert target is not None
            target[: len(piece)] = piece
            protocol.payloadReceived(len(piece))
            self.assertEqual(session.received, 4 if piece == b"abcd" else 6)
        protocol.dataReceived(imageClose(1, b"abcdef"))
        self.assertEqual(session.images[("", "a.img")].data.tobytes(), b"abcdef")


class CacheLinkFactoryTests(SynchronousTestCase):
    """
    Tests for L{CacheLinkFactory}.
    """

    def test_buildProtocol(self) -> None:
        """
        Each protocol the factory builds fills the factory's slot, and reads
        the factory's clock.
        """
        clock = Clock()
        clock.advance(9)
        slot = SessionSlot(clock=clock.seconds)
        factory = CacheLinkFactory(slot, clock.seconds)
        protocol = factory.buildProtocol(None)
        self.assertIsInstance(protocol, CacheLinkProtocol)
        self.assertIs(protocol.factory, factory)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(hello("mig"))
        self.assertIs(protocol.state.session, slot.current)
        self.assertEqual(slot.current.started, 9)


class OpenImagesLimitTests(SynchronousTestCase):
    """
    A link may not hold more than L{MAX_OPEN_IMAGES} images open at once.
    """

    def test_limit(self) -> None:
        """
        One image more than the limit fails the session with a reason
        naming it; up to the limit is fine.
        """
        from imgrelay.cache.link import MAX_OPEN_IMAGES

        protocol = CacheLinkProtocol(SessionSlot(), Clock().seconds)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(hello() + b"".join(imageOpen(i, f"{i}.img") for i in range(1, MAX_OPEN_IMAGES + 1)))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(imageOpen(MAX_OPEN_IMAGES + 1, "one-more.img"))
        self.assertTrue(transport.disconnecting)
        session = protocol.state.session
        assert session is not None
        self.assertIn(f"more than {MAX_OPEN_IMAGES} images open", session.failure or "")


class WhenIdleTests(SynchronousTestCase):
    """
    L{CacheLinkFactory.whenIdle} tells when no link is open: a oneshot
    cache waits for it so its last answer reaches the proxy before it exits.
    """

    def test_whenIdle(self) -> None:
        """
        It fires at once with no link, and otherwise once the last link
        closed.
        """
        factory = CacheLinkFactory(SessionSlot(), Clock().seconds)
        self.successResultOf(factory.whenIdle())
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        idle = factory.whenIdle()
        self.assertNoResult(idle)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(idle)
