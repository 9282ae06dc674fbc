"""
Tests for L{imgrelay.cli.fetch}: a hostile or broken cache, played by
the test over a socket pair, never gets a file written outside the
directory, over a file, or left half-written.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from typing import Optional

from crc32c import crc32c
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.transport.localsock import FETCH_SOCKET
from imgrelay.wire import fetch as _fetchwire
from imgrelay.cli.progress import Progress
from imgrelay.cli.fetch import FetchError, Fetched, connect, fetchSocketPath, receive
from imgrelay.core.integrity import ManifestEntry, manifestDigest

Images = list[tuple[str, str, bytes]]


def session(images: Images, name: str = "s", end: bool = True, digest: Optional[bytes] = None) -> bytes:
    """
    What a well-behaved cache sends for C{images}: (snapshot id, name,
    content) each.
    """
    entries = [ManifestEntry(s, n, len(c), crc32c(c)) for s, n, c in images]
    total = sum(len(c) for _, _, c in images)
    data = _fetchwire.begin(name, len(images), total)
    for s, n, c in images:
        data += _fetchwire.image(s, n, len(c), crc32c(c)) + c
    if end:
        data += _fetchwire.end(len(images), total, manifestDigest(entries) if digest is None else digest)
    return data


class ReceiveTests(SynchronousTestCase):
    """
    L{receive} checks everything the cache sends before it trusts it.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.dir = os.path.join(self.base, "out")
        os.makedirs(self.dir)
        self.stderr = io.StringIO()

    def receive(self, data: bytes) -> Fetched:
        """
        Play the cache: send C{data}, close, and run the client.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        with theirs:
            theirs.sendall(data)
        return receive(ours, self.dir, Progress(self.stderr, "fetch", bar=False))

    def fails(self, data: bytes, *fragments: str) -> str:
        """
        The client fails on C{data} with a message holding C{fragments}.
        """
        error = str(self.assertRaises(FetchError, self.receive, data))
        for fragment in fragments:
            self.assertIn(fragment, error)
        return error

    def everything(self) -> list[str]:
        """
        Every path under the test's base directory.
        """
        return sorted(os.path.relpath(os.path.join(d, n), self.base) for d, ds, fs in os.walk(self.base) for n in ds + fs)

    def test_good(self) -> None:
        """
        A whole session is written, images of snapshot C{""} in the
        directory and others in their snapshot's directory, and reported.
        """
        images = [("", "a.img", b"A" * 1000), ("", "empty.img", b""), ("/mig/1", "a.img", os.urandom(70000))]
        ours, theirs = socket.socketpair()
        # More than the socket buffer holds: the cache writes as the client reads.
        writer = threading.Thread(target=lambda: (theirs.sendall(session(images, "mig")), theirs.close()))
        writer.start()
        try:
            fetched = receive(ours, self.dir, Progress(self.stderr, "fetch", bar=False))
        finally:
            writer.join()
            ours.close()
        self.assertEqual(fetched, Fetched("mig", 3, 71000))
        for snap, name, content in images:
            with open(os.path.join(self.dir, snap.replace("/", "%2F"), name), "rb") as f:
                self.assertEqual(f.read(), content)
        self.assertIn("fetch: 100% (69.3 KiB of 69.3 KiB)", self.stderr.getvalue())

    def test_hostileNames(self) -> None:
        """
        Image names that would leave the directory or are not file names
        (C{../x}, C{/etc/x}, C{a/b}, a NUL, C{..}, C{.}, empty) are refused,
        and nothing at all is written.
        """
        for name in ["../x", "/etc/x", "a/b", "x\0y", "..", ".", ""]:
            self.fails(session([("", name, b"evil")]), "refused", "image name")
            self.assertEqual(self.everything(), ["out"], name)

    def test_hostileSnapshotId(self) -> None:
        """
        A snapshot id holding a NUL is refused; one shaped as a path stays
        inside the directory, as one encoded directory name.
        """
        self.fails(session([("a\0b", "x.img", b"evil")]), "snapshot id", "NUL")
        self.assertEqual(self.everything(), ["out"])
        self.receive(session([("../..", "x.img", b"fine")]))
        self.assertEqual(self.everything(), ["out", "out/..%2F..", "out/..%2F../x.img"])

    def test_plantedSymlink(self) -> None:
        """
        A symbolic link planted in the directory under an image's name is
        neither followed nor replaced.
        """
        target = os.path.join(self.base, "target")
        os.symlink(target, os.path.join(self.dir, "a.img"))
        self.fails(session([("", "a.img", b"evil")]), "already exists")
        self.assertFalse(os.path.lexists(target))
        self.assertTrue(os.path.islink(os.path.join(self.dir, "a.img")))

    def test_existingFileKept(self) -> None:
        """
        An image whose file exists fails the fetch and leaves the file as
        it was; a second image of the same name too.
        """
        with open(os.path.join(self.dir, "a.img"), "wb") as f:
            f.write(b"mine")
        self.fails(session([("", "a.img", b"theirs")]), "a.img already exists")
        with open(os.path.join(self.dir, "a.img"), "rb") as f:
            self.assertEqual(f.read(), b"mine")
        os.unlink(os.path.join(self.dir, "a.img"))
        self.fails(session([("", "a.img", b"1"), ("", "a.img", b"2")]), "already exists")

    def test_corruptByte(self) -> None:
        """
        An image whose bytes do not match its CRC-32C fails the fetch, and
        its partial file is removed; images verified before it are kept.
        """
        data = session([("", "a.img", b"good"), ("", "b.img", b"x" * 5000)])
        bad = bytearray(data)
        bad[bad.index(b"x" * 5000) + 1234] ^= 0x01
        error = self.fails(bytes(bad), "b.img", "corrupt", "removed the partial")
        self.assertIn(os.path.join(self.dir, "b.img"), error)
        self.assertEqual(os.listdir(self.dir), ["a.img"])

    def test_truncated(self) -> None:
        """
        A connection that ends in the middle of an image fails the fetch
        and removes the partial file; one that ends between images or
        before End fails it too.
        """
        data = session([("", "a.img", b"x" * 5000)])
        cut = data.index(b"x" * 5000) + 100
        self.fails(data[:cut], "in the middle of image 'a.img' (100 of 5000 bytes)", "removed the partial")
        self.assertEqual(os.listdir(self.dir), [])
        self.fails(session([("", "a.img", b"x")], end=False), "after 1 of 1 images")
        os.unlink(os.path.join(self.dir, "a.img"))
        self.fails(b"", "without an answer")
        self.fails(data[:3], "without an answer")

    def test_badDigest(self) -> None:
        """
        An End whose manifest digest does not match the images received
        fails the fetch.
        """
        self.fails(session([("", "a.img", b"x")], digest=b"\x00" * 32), "manifest digest")

    def test_badCounts(self) -> None:
        """
        An End or Begin whose counts differ from what arrived fails it.
        """
        data = _fetchwire.begin("s", 2, 1) + _fetchwire.image("", "a.img", 1, crc32c(b"x")) + b"x"
        data += _fetchwire.end(2, 1, manifestDigest([ManifestEntry("", "a.img", 1, crc32c(b"x"))]))
        self.fails(data, "received 1 images")

    def test_cacheError(self) -> None:
        """
        A failed session's reason is shown.
        """
        self.fails(_fetchwire.error("session 's' failed: link lost"), "the cache answered: session 's' failed: link lost")

    def test_protocolErrors(self) -> None:
        """
        Another version, a message out of order, or garbage fail the
        fetch with a message saying so.
        """
        begin = _fetchwire.frame(_fetchwire.FetchMessage(begin=_fetchwire.fetch_pb2.Begin(version=2)))
        self.fails(begin, "version 2")
        self.fails(_fetchwire.image("", "a.img", 0, 0), "image before begin")
        self.fails(session([]) + session([]), "after the end")
        self.fails(b"\xff\xff\xff\xff", "malformed")


class ConnectTests(SynchronousTestCase):
    """
    L{connect} finds the socket from a path or its directory.
    """

    def test_path(self) -> None:
        """
        A directory means the fetch socket in it; anything else is the
        socket itself.
        """
        self.assertEqual(fetchSocketPath("/"), "/" + FETCH_SOCKET)
        self.assertEqual(fetchSocketPath("/nonexistent/x.sock"), "/nonexistent/x.sock")

    def test_unreachable(self) -> None:
        """
        A socket that is not there is one clear error naming it.
        """
        path = os.path.abspath(self.mktemp())
        error = self.assertRaises(FetchError, connect, path)
        self.assertIn(f"cannot connect to {path}", str(error))
