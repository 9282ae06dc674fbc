# -*- test-case-name: tests.cli.test_fetch -*-
"""
The client side of C{imgrelay fetch}: receive a complete session from the
cache's fetch socket, verify every image and the session's manifest, and
write the images into a directory.

It is plain blocking Python: a command that reads one socket and writes
files one after the other gains nothing from an event loop, and blocking
calls keep the file handling (a directory descriptor, C{O_EXCL},
C{O_NOFOLLOW}, removing a partial file) straightforward. It still parses
with the same sans-IO L{Framer} as the daemons.

Where the images go is L{imgrelay.cli.imagefiles}' business.
"""

from __future__ import annotations

import os
import socket
from typing import Optional

import attrs

from imgrelay.transport.localsock import FETCH_SOCKET
from imgrelay.wire.fetch import VERSION, fetchMessageFramer
from imgrelay.wire.framing import FramingError, HeaderReceived, PayloadChunk, PayloadDone
from imgrelay.core.integrity import ManifestEntry, RunningChecksum, manifestDigest
from imgrelay.cli.imagefiles import FetchError, ImageFiles
from imgrelay.core.names import BadName, checkId, checkImageName
from imgrelay.cli.progress import Progress
from imgrelay.wire.pb import fetch_pb2

#: How much is received at once.
RECEIVE = 1 << 20


@attrs.frozen
class Fetched:
    """
    A session fetched whole.
    """

    session: str
    images: int
    bytes: int


def fetchSocketPath(socketOrDir: str) -> str:
    """
    @return: C{socketOrDir} itself, or the fetch socket inside it if it is
        a directory.
    """
    if os.path.isdir(socketOrDir):
        return os.path.join(socketOrDir, FETCH_SOCKET)
    return socketOrDir


def connect(socketOrDir: str) -> socket.socket:
    """
    Connect to a cache's fetch socket.

    @raise FetchError: If it cannot be reached.
    """
    path = fetchSocketPath(socketOrDir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise FetchError(f"cannot connect to {path}: {e.strerror or e}") from None
    return sock


class FetchReceiver:
    """
    What the cache sends, checked message by message; the images go to an
    L{ImageFiles}.
    """

    def __init__(self, files: ImageFiles, progress: Progress) -> None:
        self._files = files
        self._progress = progress
        self._framer = fetchMessageFramer()
        self._begin: Optional[fetch_pb2.Begin] = None
        self._image: Optional[fetch_pb2.Image] = None
        self._checksum = RunningChecksum()
        self._entries: list[ManifestEntry] = []
        self.result: Optional[Fetched] = None

    def feed(self, data: bytes) -> None:
        """
        Handle more bytes from the cache.

        @raise FetchError: On anything wrong.
        """
        try:
            for event in self._framer.feed(data):
                if isinstance(event, HeaderReceived):
                    self._message(event.message)
                elif isinstance(event, PayloadChunk):
                    self._checksum.update(event.data)
                    self._files.write(event.data)
                    self._progress.update(len(event.data))
                elif isinstance(event, PayloadDone):
                    self._imageDone()
        except FramingError as e:
            raise FetchError(f"the cache sent malformed data: {e}") from None
        except BadName as e:
            raise FetchError(f"the cache sent a name that is refused: {e}") from None

    def _message(self, message: fetch_pb2.FetchMessage) -> None:
        kind = message.WhichOneof("kind")
        if self.result is not None:
            raise FetchError(f"the cache sent {kind} after the end")
        if kind == "error":
            raise FetchError(f"the cache answered: {message.error.reason}")
        if self._begin is None:
            if kind != "begin":
                raise FetchError(f"the cache sent {kind} before begin")
            if message.begin.version != VERSION:
                raise FetchError(f"the cache speaks fetch version {message.begin.version}, not {VERSION}")
            self._begin = message.begin
            self._progress.start(
                message.begin.bytes, f"session {message.begin.session}, {message.begin.images} images"
            )
        elif kind == "image":
            image = message.image
            checkImageName(image.name)
            checkId("snapshot id", image.snapshot_id)
            self._files.create(image.snapshot_id, image.name)
            self._image = image
            self._checksum = RunningChecksum()
            if image.size == 0:
                self._imageDone()
        elif kind == "end":
            self._end(message.end)
        else:
            raise FetchError(f"the cache sent a second {kind}")

    def _imageDone(self) -> None:
        image, self._image = self._image, None
        assert image is not None
        c = self._checksum
        if c.size != image.size or c.crc != image.crc32c:
            raise FetchError(
                f"image {image.name!r} is corrupt: {c.size} bytes with CRC-32C {c.crc:08x}, "
                f"announced {image.size} with {image.crc32c:08x}"
            )
        self._files.finish()
        self._entries.append(ManifestEntry(image.snapshot_id, image.name, c.size, c.crc))

    def _end(self, end: fetch_pb2.End) -> None:
        begin = self._begin
        assert begin is not None
        total = sum(e.size for e in self._entries)
        counted = (len(self._entries), total)
        if counted != (end.images, end.bytes) or counted != (begin.images, begin.bytes):
            raise FetchError(
                f"received {counted[0]} images, {counted[1]} bytes; the cache announced "
                f"{begin.images} and {begin.bytes}, and counted {end.images} and {end.bytes}"
            )
        if manifestDigest(self._entries) != end.manifest_sha256:
            raise FetchError("the session's manifest digest does not match the images received")
        self.result = Fetched(begin.session, len(self._entries), total)

    def eof(self) -> Fetched:
        """
        The cache closed the connection.

        @return: What was fetched.
        @raise FetchError: If it closed before the end.
        """
        if self.result is not None:
            return self.result
        if self._begin is None:
            raise FetchError("the cache closed the connection without an answer")
        if self._image is not None:
            raise FetchError(
                f"the cache closed the connection in the middle of image {self._image.name!r} "
                f"({self._checksum.size} of {self._image.size} bytes)"
            )
        raise FetchError(
            f"the cache closed the connection after {len(self._entries)} of {self._begin.images} images"
        )


def receive(sock: socket.socket, directory: str, progress: Progress) -> Fetched:
    """
    Receive a session from a connected fetch socket into C{directory}.

    @return: What was fetched.
    @raise FetchError: On any error, once the partial file being written
        was removed.
    """
    files = ImageFiles(directory)
    receiver = FetchReceiver(files, progress)
    try:
        while receiver.result is None:
            try:
                data = sock.recv(RECEIVE)
            except OSError as e:
                raise FetchError(f"receiving from the cache failed: {e.strerror or e}") from None
            if not data:
                break
            receiver.feed(data)
        return receiver.eof()
    except BaseException as e:
        partial = files.discard()
        if partial is not None and isinstance(e, FetchError):
            raise FetchError(f"{e} (removed the partial {partial})") from None
        raise
    finally:
        files.close()
