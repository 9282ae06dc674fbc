"""
Tests for L{imgrelay.proxy.session}: the proxy's side of one session, driven
through a fake L{ILinkSender} that records what would be sent.
"""

from __future__ import annotations

from typing import Any

from crc32c import crc32c
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from imgrelay.core.errors import SessionError
from imgrelay.core.integrity import ManifestEntry, manifestDigest
from imgrelay.core.interfaces import IImageSink, IOutgoingImage
from imgrelay.wire.link import APPEND, CREATE, REPLACE
from imgrelay.core.names import BadName
from imgrelay.proxy.session import (
    ILinkSender,
    OutgoingImage,
    ProxySession,
    SessionOutcome,
)


@implementer(ILinkSender)
class FakeLink:
    """
    An L{ILinkSender} that records each call as a tuple.

    @ivar calls: What was sent, in order.
    """

    #: Pipes read into new bytes.
    ring = None

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def sendOpen(self, image: int, snapshotId: str, name: str, mode: int = 0) -> None:
        """
        Record an open (the mode only when it is not CREATE).
        """
        self.calls.append(("open", image, snapshotId, name) + ((mode,) if mode else ()))

    def sendSnapshot(self, snapshotId: str) -> None:
        """
        Record a snapshot push.
        """
        self.calls.append(("snapshot", snapshotId))

    def sendChunk(self, image: int, data: bytes) -> None:
        """
        Record a chunk.
        """
        self.calls.append(("chunk", image, data))

    def sendClose(self, image: int, size: int, crc: int) -> None:
        """
        Record a close.
        """
        self.calls.append(("close", image, size, crc))

    def sendDone(self, images: int, size: int, digest: bytes) -> None:
        """
        Record a done.
        """
        self.calls.append(("done", images, size, digest))

    def sendAbort(self, reason: str) -> None:
        """
        Record an abort.
        """
        self.calls.append(("abort", reason))

    def kinds(self) -> list[str]:
        """
        @return: The kind of each call, in order.
        """
        return [c[0] for c in self.calls]


@implementer(IPushProducer)
class FakeProducer:
    """
    An L{IPushProducer} that records the calls made to it.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        """
        Record a pause.
        """
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        """
        Record a resume.
        """
        self.calls.append("resume")

    def stopProducing(self) -> None:
        """
        Record a stop.
        """
        self.calls.append("stop")


class ProxySessionTests(SynchronousTestCase):
    """
    Tests for L{ProxySession} and L{OutgoingImage}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.session = ProxySession("mig", self.clock.seconds)
        self.link = FakeLink()
        self.logs = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]  # typed for TestCase only
        )

    def accept(self) -> None:
        """
        The cache accepts the session on the fake link.
        """
        self.session.accepted(self.link)
        self.assertIsNone(self.successResultOf(self.session.ready))

    def errorsLogged(self) -> list[str]:
        """
        @return: The text of every error logged.
        """
        return [formatEvent(e) for e in self.logs if e["log_level"] == LogLevel.error]

    def test_interfaces(self) -> None:
        """
        L{ProxySession} provides L{IImageSink}, L{OutgoingImage} provides
        L{IOutgoingImage}, and the fake link provides L{ILinkSender}.
        """
        self.assertTrue(verifyObject(IImageSink, self.session))
        self.assertTrue(verifyObject(ILinkSender, self.link))
        self.accept()
        self.assertTrue(verifyObject(IOutgoingImage, self.session.openImage("", "a.img")))

    def test_sessionNameChecked(self) -> None:
        """
        A session name holding a NUL is refused.
        """
        self.assertRaises(BadName, ProxySession, "a\0b")

    def test_initialState(self) -> None:
        """
        A new session is paused, not over, and waits for the cache.
        """
        self.assertTrue(self.session.paused)
        self.assertFalse(self.session.over)
        self.assertNoResult(self.session.ready)
        self.assertNoResult(self.session.result)

    def test_acceptReadyAndResume(self) -> None:
        """
        The cache's acceptance fires C{ready} and lets producers run.
        """
        self.accept()
        self.assertFalse(self.session.paused)
        self.assertNoResult(self.session.result)

    def test_openBeforeAccept(self) -> None:
        """
        No image can be opened before the cache accepted the session.
        """
        self.assertRaises(SessionError, self.session.openImage, "", "a.img")

    def test_openAfterFinish(self) -> None:
        """
        No image can be opened once the session was told to finish.
        """
        self.accept()
        self.session.finish()
        self.link.calls.clear()
        self.assertRaises(SessionError, self.session.openImage, "", "a.img")
        self.assertEqual(self.link.calls, [])

    def test_openAfterFailure(self) -> None:
        """
        No image can be opened once the session failed.
        """
        self.accept()
        self.session.failed("broken")
        self.failureResultOf(self.session.result, SessionError)
        self.assertRaises(SessionError, self.session.openImage, "", "a.img")
        self.assertEqual(self.link.calls, [])

    def test_badNames(self) -> None:
        """
        Image names that are not plain file names, and snapshot ids holding
        a NUL, are refused before anything is sent.
        """
        self.accept()
        for name in ["", ".", "..", "a/b", "a\0b", "x" * 256]:
            self.assertRaises(BadName, self.session.openImage, "", name)
        self.assertRaises(BadName, self.session.openImage, "s\0", "a.img")
        self.assertEqual(self.link.calls, [])
        # The session goes on.
        self.session.openImage("", "a.img")
        self.assertEqual(self.link.calls, [("open", 1, "", "a.img")])

    def test_openSends(self) -> None:
        """
        Opening images announces each under a new id, from 1.
        """
        self.accept()
        a = self.session.openImage("snap", "a.img")
        b = self.session.openImage("", "b.img")
        self.assertEqual((a.id, a.name, a.snapshotId), (1, "a.img", "snap"))
        self.assertEqual(b.id, 2)
        self.assertEqual(self.link.calls, [("open", 1, "snap", "a.img"), ("open", 2, "", "b.img")])

    def test_checksumAccumulated(self) -> None:
        """
        An image's writes are sent as chunks, and its close announces the
        total size and the CRC-32C of everything written.
        """
        self.accept()
        image = self.session.openImage("", "a.img")
        image.write(b"hello ")
        image.write(b"")
        image.write(b"world")
        image.close()
        crc = crc32c(b"hello world")
        self.assertEqual(
            self.link.calls,
            [
                ("open", 1, "", "a.img"),
                ("chunk", 1, b"hello "),
                ("chunk", 1, b""),
                ("chunk", 1, b"world"),
                ("close", 1, 11, crc),
            ],
        )
        self.assertEqual((image.checksum.size, image.checksum.crc), (11, crc))

    def test_checksumPerImage(self) -> None:
        """
        Interleaved writes of two images are checksummed separately.
        """
        self.accept()
        a = self.session.openImage("", "a.img")
        b = self.session.openImage("", "b.img")
        a.write(b"aa")
        b.write(b"b")
        a.write(b"a")
        b.close()
        a.close()
        closes = [c for c in self.link.calls if c[0] == "close"]
        self.assertEqual(closes, [("close", 2, 1, crc32c(b"b")), ("close", 1, 3, crc32c(b"aaa"))])

    def test_doneWaitsForFinishAndClose(self) -> None:
        """
        Done is sent only once C{finish} was called and every image is
        closed, with the count, bytes and manifest digest of every image.
        """
        self.accept()
        a = self.session.openImage("", "a.img")
        b = self.session.openImage("s", "b.img")
        a.write(b"aaa")
        a.close()
        self.assertNotIn("done", self.link.kinds())
        self.session.finish()
        self.assertNotIn("done", self.link.kinds())
        b.write(b"bb")
        b.close()
        digest = manifestDigest(
            [ManifestEntry("", "a.img", 3, crc32c(b"aaa")), ManifestEntry("s", "b.img", 2, crc32c(b"bb"))]
        )
        self.assertEqual(self.link.calls[-1], ("done", 2, 5, digest))
        self.assertEqual(self.link.kinds().count("done"), 1)

    def test_doneOnce(self) -> None:
        """
        Done is sent once, however often C{finish} is called.
        """
        self.accept()
        self.session.finish()
        self.session.finish()
        self.assertEqual(self.link.calls, [("done", 0, 0, manifestDigest([]))])

    def test_finishBeforeAccept(self) -> None:
        """
        A session told to finish before the cache accepted it sends done
        once it is accepted, and completes.
        """
        self.session.finish()
        self.assertEqual(self.link.calls, [])
        self.accept()
        self.assertEqual(self.link.calls, [("done", 0, 0, manifestDigest([]))])
        self.session.doneOk()
        self.assertEqual(self.successResultOf(self.session.result).images, 0)

    def test_finishAfterFailure(self) -> None:
        """
        A session that failed sends no done when told to finish afterwards.
        """
        self.accept()
        self.session.failed("cache went away")
        self.failureResultOf(self.session.result, SessionError)
        self.session.finish()
        self.assertEqual(self.link.calls, [])

    def test_doneOk(self) -> None:
        """
        The cache's done_ok after every image was acknowledged fires
        C{result} with the session's outcome.
        """
        self.clock.advance(10)
        session = ProxySession("mig", self.clock.seconds)
        session.accepted(self.link)
        self.successResultOf(session.ready)
        a = session.openImage("", "a.img")
        a.write(b"x" * 10)
        a.close()
        session.finish()
        session.acked(1)
        self.clock.advance(2.5)
        self.assertNoResult(session.result)
        session.doneOk()
        self.assertEqual(self.successResultOf(session.result), SessionOutcome("mig", 1, 10, 2.5))
        self.assertTrue(session.over)
        self.assertEqual(self.errorsLogged(), [])

    def test_doneOkBeforeDone(self) -> None:
        """
        A done_ok before done was sent fails the session.
        """
        self.accept()
        self.session.doneOk()
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("not complete", str(f.value))
        self.assertTrue(self.session.over)

    def test_doneOkWithUnacked(self) -> None:
        """
        A done_ok while an image is not acknowledged yet fails the session.
        """
        self.accept()
        a = self.session.openImage("", "a.img")
        a.close()
        self.session.finish()
        self.session.doneOk()
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("not complete", str(f.value))

    def test_ackUnknown(self) -> None:
        """
        An acknowledgement of an image not awaiting one fails the session.
        """
        self.accept()
        self.session.openImage("", "a.img")
        self.session.acked(1)
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertIn("image 1", str(f.value))

    def test_ackTwice(self) -> None:
        """
        A second acknowledgement of an image fails the session.
        """
        self.accept()
        self.session.openImage("", "a.img").close()
        self.session.acked(1)
        self.assertNoResult(self.session.result)
        self.session.acked(1)
        self.failureResultOf(self.session.result, SessionError)

    def test_failedBeforeAccept(self) -> None:
        """
        A failure before the cache accepted fails both C{ready} and
        C{result} with the reason, and logs it.
        """
        self.session.failed("refused")
        for d in (self.session.ready, self.session.result):
            f = self.failureResultOf(d, SessionError)
            self.assertEqual(str(f.value), "refused")
        self.assertTrue(self.session.over)
        self.assertTrue(any("refused" in e for e in self.errorsLogged()))

    def test_failedAfterAccept(self) -> None:
        """
        A failure after acceptance fails C{result}; C{ready} keeps its
        success.
        """
        self.accept()
        self.session.failed("image refused")
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertEqual(str(f.value), "image refused")

    def test_failedTwice(self) -> None:
        """
        Only the first failure counts.
        """
        self.accept()
        self.session.failed("first")
        self.session.failed("second")
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertEqual(str(f.value), "first")

    def test_failedAfterDoneOk(self) -> None:
        """
        A failure after the session completed changes nothing.
        """
        self.accept()
        self.session.finish()
        self.session.doneOk()
        self.session.failed("late")
        self.assertEqual(self.successResultOf(self.session.result).images, 0)

    def test_abort(self) -> None:
        """
        Aborting tells the cache why and fails the session.
        """
        self.accept()
        self.session.openImage("", "a.img")
        self.session.abort("CRIU died")
        self.assertEqual(self.link.calls[-1], ("abort", "CRIU died"))
        f = self.failureResultOf(self.session.result, SessionError)
        self.assertEqual(str(f.value), "aborted: CRIU died")
        self.session.abort("again")
        self.assertEqual(self.link.kinds().count("abort"), 1)

    def test_abortBeforeAccept(self) -> None:
        """
        Aborting before the cache accepted sends nothing and fails both
        Deferreds.
        """
        self.session.abort("no")
        self.failureResultOf(self.session.ready, SessionError)
        self.failureResultOf(self.session.result, SessionError)
        self.assertEqual(self.link.calls, [])

    def test_nothingSentAfterFailure(self) -> None:
        """
        Writes and closes of images after the session failed send nothing.
        """
        self.accept()
        image = self.session.openImage("", "a.img")
        self.session.failed("broken")
        self.failureResultOf(self.session.result, SessionError)
        self.link.calls.clear()
        image.write(b"data")
        image.close()
        self.session.finish()
        self.assertEqual(self.link.calls, [])

    def test_producerPausedWhilePaused(self) -> None:
        """
        A producer attached while the session is paused is paused at once,
        and resumed when the session resumes.
        """
        self.accept()
        self.session.pause()
        image = self.session.openImage("", "a.img")
        producer = FakeProducer()
        image.attachProducer(producer)
        self.assertEqual(producer.calls, ["pause"])
        self.session.resume()
        self.assertFalse(self.session.paused)
        self.assertEqual(producer.calls, ["pause", "resume"])

    def test_producerResumedWhenRunning(self) -> None:
        """
        A producer attached while the session runs is resumed, and paused
        when the session is.
        """
        self.accept()
        image = self.session.openImage("", "a.img")
        producer = FakeProducer()
        image.attachProducer(producer)
        self.assertEqual(producer.calls, ["resume"])
        self.session.pause()
        self.assertTrue(self.session.paused)
        self.assertEqual(producer.calls, ["resume", "pause"])

    def test_everyProducerPaused(self) -> None:
        """
        Pausing and resuming the session reaches the producer of every open
        image, and not those of closed images.
        """
        self.accept()
        producers = [FakeProducer() for _ in range(3)]
        images = [self.session.openImage("", f"{i}.img") for i in range(3)]
        for image, producer in zip(images, producers):
            image.attachProducer(producer)
        images[1].close()
        self.session.pause()
        self.session.resume()
        self.assertEqual(producers[0].calls, ["resume", "pause", "resume"])
        self.assertEqual(producers[1].calls, ["resume"])
        self.assertEqual(producers[2].calls, ["resume", "pause", "resume"])

    def test_resumeBeforeAccept(self) -> None:
        """
        A resume before the cache accepted keeps the session paused.
        """
        self.session.resume()
        self.assertTrue(self.session.paused)

    def test_noResumeAfterFailure(self) -> None:
        """
        Once the session failed, resuming does not start producers again.
        """
        self.accept()
        producer = FakeProducer()
        self.session.openImage("", "a.img").attachProducer(producer)
        self.session.pause()
        self.session.failed("broken")
        self.failureResultOf(self.session.result, SessionError)
        self.session.resume()
        self.assertEqual(producer.calls, ["resume", "pause"])

    def test_outgoingImageDelegates(self) -> None:
        """
        An L{OutgoingImage} records its session, id and open time.
        """
        self.clock.advance(4)
        self.accept()
        image = self.session.openImage("s", "a.img")
        self.assertIsInstance(image, OutgoingImage)
        self.assertIs(image.session, self.session)
        self.assertEqual(image.opened, 4)
        self.assertIsNone(image.closed)
        self.clock.advance(1)
        image.close()
        self.assertEqual(image.closed, 5)


class VersionTests(SynchronousTestCase):
    """
    L{ProxySession} with images written more than once and read back, as
    CRIU's C{--remote} dump does.
    """

    def setUp(self) -> None:
        self.session = ProxySession("mig", Clock().seconds, keepImages=True)
        self.link = FakeLink()
        self.session.accepted(self.link)

    def write(self, name: str, content: bytes, mode: int = CREATE, snapshotId: str = "s") -> None:
        image = self.session.openImage(snapshotId, name, mode)
        image.write(content)
        image.close()

    def test_replaceCountsLastVersion(self) -> None:
        """
        A REPLACE is announced as such, and the final handshake counts only
        the last version of the image.
        """
        self.write("a.img", b"old")
        self.write("a.img", b"newer", REPLACE)
        self.session.finish()
        opens = [c for c in self.link.calls if c[0] == "open"]
        self.assertEqual(opens, [("open", 1, "s", "a.img"), ("open", 2, "s", "a.img", REPLACE)])
        (doneCall,) = [c for c in self.link.calls if c[0] == "done"]
        expected = manifestDigest([ManifestEntry("s", "a.img", 5, crc32c(b"newer"))])
        self.assertEqual(doneCall[1:], (1, 5, expected))

    def test_appendClosesWithWhole(self) -> None:
        """
        An APPEND closes with the size and CRC-32C of the whole image.
        """
        self.write("a.img", b"abc")
        self.write("a.img", b"def", APPEND)
        closes = [c for c in self.link.calls if c[0] == "close"]
        self.assertEqual(closes[-1], ("close", 2, 6, crc32c(b"abcdef")))

    def test_createTwiceRefused(self) -> None:
        """
        A second CREATE of one image is refused; so is opening an image that
        is still being written.
        """
        self.write("a.img", b"x")
        self.assertRaises(SessionError, self.session.openImage, "s", "a.img")
        self.session.openImage("s", "b.img")
        self.assertRaises(SessionError, self.session.openImage, "s", "b.img", REPLACE)

    def test_localImage(self) -> None:
        """
        A kept image is read back whole (old bytes and appended ones); one
        still being written is given once closed; an unknown one is None at
        once.
        """
        self.write("a.img", b"abc")
        self.write("a.img", b"def", APPEND)
        kept = self.successResultOf(self.session.localImage("s", "a.img"))
        assert kept is not None
        self.assertEqual(kept.data.tobytes(), b"abcdef")
        self.assertIsNone(self.successResultOf(self.session.localImage("s", "nope.img")))
        image = self.session.openImage("s", "b.img")
        pending = self.session.localImage("s", "b.img")
        self.assertNoResult(pending)
        image.write(b"late")
        image.close()
        result = self.successResultOf(pending)
        assert result is not None
        self.assertEqual(result.data.tobytes(), b"late")

    def test_notKeptByDefault(self) -> None:
        """
        Without C{keepImages} nothing is kept (the C{--stream} proxy holds no
        image).
        """
        session = ProxySession("mig", Clock().seconds)
        session.accepted(FakeLink())
        image = session.openImage("", "a.img")
        image.write(b"x")
        image.close()
        self.assertIsNone(self.successResultOf(session.localImage("", "a.img")))

    def test_pushSnapshot(self) -> None:
        """
        Snapshot ids are kept in push order and sent on the link.
        """
        self.session.pushSnapshot("/mig/d1")
        self.session.pushSnapshot("/mig/d2")
        self.assertEqual(self.session.snapshots, ["/mig/d1", "/mig/d2"])
        self.assertEqual([c for c in self.link.calls if c[0] == "snapshot"],
                         [("snapshot", "/mig/d1"), ("snapshot", "/mig/d2")])
