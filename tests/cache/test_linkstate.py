"""
Tests for L{imgrelay.cache.linkstate}: what the cache's link state makes of
a proxy's messages. Most drive it as the cache does, through a
L{CacheLinkProtocol} over a L{StringTransport}, with the bytes arriving all
at once and one at a time; L{CacheLinkStateTests} drive it alone.
"""

from __future__ import annotations

import struct

from crc32c import crc32c
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cache.link import CacheLinkProtocol
from imgrelay.cache.linkstate import MAX_OPEN_IMAGES, CacheLinkState
from imgrelay.core.errors import ProtocolError
from imgrelay.core.store import SessionState
from imgrelay.core.slot import SessionSlot
from imgrelay.wire.framing import DEFAULT_MAX_HEADER
from imgrelay.wire.link import MAX_CHUNK, VERSION, ProxyMessage, chunkHeader, frame, proxyMessageFramer
from imgrelay.wire.pb import link_pb2
from tests.cache.helpers import (
    LinkTestMixin,
    abort,
    chunk,
    done,
    hello,
    imageClose,
    imageOpen,
    wholeImage,
)


class _LinkStateMixin(LinkTestMixin):
    """
    What the link state answers and does to the session, whatever way the
    bytes arrive; a subclass says how in L{feed}.
    """

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

    # Refused links.

    def test_wrongVersion(self) -> None:
        """
        A hello of another version is refused.
        """
        self.deliver(hello(version=VERSION + 2))
        self.assertRefused(f"version {VERSION + 2} is not supported")

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


class LinkStateWholeTests(_LinkStateMixin, SynchronousTestCase):
    """
    The link state with everything the proxy sends arriving at once.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        """
        Deliver C{data} in one call.
        """
        protocol.dataReceived(data)


class LinkStateByteTests(_LinkStateMixin, SynchronousTestCase):
    """
    The link state with what the proxy sends arriving one byte at a time.
    """

    def feed(self, protocol: CacheLinkProtocol, data: bytes) -> None:
        """
        Deliver C{data} one byte per call.
        """
        for i in range(len(data)):
            protocol.dataReceived(data[i : i + 1])


class OpenImagesLimitTests(SynchronousTestCase):
    """
    A link may not hold more than L{MAX_OPEN_IMAGES} images open at once.
    """

    def test_limit(self) -> None:
        """
        One image more than the limit fails the session with a reason
        naming it; up to the limit is fine.
        """
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


class CacheLinkStateTests(SynchronousTestCase):
    """
    L{CacheLinkState} alone: framing events in, the answers to send out,
    with no transport, reactor or clock of its own.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.slot = SessionSlot(clock=self.clock.seconds)
        self.state = CacheLinkState(self.slot, self.clock.seconds)
        self.framer = proxyMessageFramer()

    def receive(self, data: bytes) -> list[str]:
        """
        Hand the state every event C{data} makes.

        @return: The kinds of the answers, in order.
        """
        kinds: list[str] = []
        for event in list(self.framer.feed(data)):
            kinds.extend(m.WhichOneof("kind") for m in self.state.received(event))
        return kinds

    def test_helloClaimsSession(self) -> None:
        """
        A hello is answered with an accept, and claims the session it names.
        """
        self.assertIsNone(self.state.session)
        self.assertEqual(self.receive(hello("mig")), ["accept"])
        self.assertIs(self.state.session, self.slot.current)
        self.assertEqual(self.slot.current.name, "mig")

    def test_wholeSession(self) -> None:
        """
        An image is acknowledged on its close and a matching done confirmed;
        the session completes with the image.
        """
        self.receive(hello())
        self.assertEqual(self.receive(wholeImage(1, "a.img", b"abc")), ["ack"])
        self.assertEqual(self.receive(done([("", "a.img", b"abc")])), ["done_ok"])
        self.assertIs(self.slot.current.state, SessionState.COMPLETE)
        self.assertEqual(self.slot.current.images[("", "a.img")].data.tobytes(), b"abc")

    def test_notHelloFirst(self) -> None:
        """
        Anything but a hello first raises L{ProtocolError}; L{failed} then
        answers with a refusal, touching no session.
        """
        self.assertRaises(ProtocolError, self.receive, imageOpen(1, "a.img"))
        message = self.state.failed("expected hello")
        assert message is not None
        self.assertEqual(message.refuse.reason, "expected hello")
        self.assertIs(self.slot.current.state, SessionState.WAITING)

    def test_failedDuringSession(self) -> None:
        """
        L{failed} during a session fails it and answers with the reason;
        after the session ended it owes no answer.
        """
        self.receive(hello())
        message = self.state.failed("broken")
        assert message is not None
        self.assertEqual(message.failed.reason, "broken")
        self.assertIs(self.slot.current.state, SessionState.FAILED)
        self.assertIsNone(self.state.failed("again"))

    def test_payloadReceivedInPlace(self) -> None:
        """
        Payload bytes written into L{CacheLinkState.chunkTarget} and
        committed with L{CacheLinkState.chunkFilled} (while the framer skips
        them) make the image.
        """
        self.receive(hello() + imageOpen(1, "a.img") + chunkHeader(1, 3))
        target = self.state.chunkTarget(3)
        target[:3] = b"xyz"
        self.state.chunkFilled(3)
        self.framer.skipPayload(3)
        self.assertEqual(self.state.openProgress(), [link_pb2.ImageProgress(image=1, bytes=3)])
        self.assertEqual(self.receive(imageClose(1, b"xyz")), ["ack"])
        self.assertEqual(self.slot.current.images[("", "a.img")].data.tobytes(), b"xyz")

    def test_lost(self) -> None:
        """
        L{lost} fails a session in progress with the reason, and leaves a
        complete one alone.
        """
        self.receive(hello())
        self.state.lost("link gone")
        self.assertEqual(self.slot.current.failure, "link gone")
        other = CacheLinkState(SessionSlot(), self.clock.seconds)
        for event in list(proxyMessageFramer().feed(hello() + done([]))):
            other.received(event)
        other.lost("too late")
        assert other.session is not None
        self.assertIs(other.session.state, SessionState.COMPLETE)
