# -*- test-case-name: tests.test_fetchclient -*-
"""
The client side of C{imgrelay fetch}: receive a complete session from the
cache's fetch socket, verify every image and the session's manifest, and
write the images into a directory.

It is plain blocking Python: a command that reads one socket and writes
files one after the other gains nothing from an event loop, and blocking
calls keep the file handling (a directory descriptor, C{O_EXCL},
C{O_NOFOLLOW}, removing a partial file) straightforward. It still parses
with the same sans-IO L{Framer} as the daemons.

Where images go: an image of snapshot C{""} (C{--stream}) is written to
C{DIR/NAME}; any other snapshot's to C{DIR/SAFE/NAME}, where C{SAFE} is
L{safeSnapshotDir} of the snapshot id. Every file is created relative to a
directory descriptor with C{O_CREAT|O_EXCL|O_NOFOLLOW}: nothing is written
outside C{DIR}, through a symbolic link, or over an existing file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from typing import Optional
from urllib.parse import quote

import attrs

from imgrelay._fetchwire import FETCH_SOCKET, VERSION, fetchMessageFramer
from imgrelay._framing import FramingError, HeaderReceived, PayloadChunk, PayloadDone
from imgrelay._integrity import ManifestEntry, RunningChecksum, manifestDigest
from imgrelay._names import MAX_NAME, BadName, checkId, checkImageName
from imgrelay._cliprogress import Progress
from imgrelay._pb import fetch_pb2

#: How much is received at once.
RECEIVE = 1 << 20


class FetchError(Exception):
    """
    The fetch failed; the message is one line for the user.
    """


@attrs.frozen
class Fetched:
    """
    A session fetched whole.
    """

    session: str
    images: int
    bytes: int


def safeSnapshotDir(snapshotId: str) -> str:
    """
    The directory name a snapshot's images go in: the id percent-encoded
    (every byte but ASCII letters, digits and C{_.-~}, so C{/run/mig/1}
    becomes C{%2Frun%2Fmig%2F1}), C{.} and C{..} encoded as C{%2E} and
    C{%2E%2E}; an encoding longer than a file name may be keeps its first
    180 characters, then C{%~} and 32 hex digits of the id's SHA-256. Two
    different ids never share a directory.

    @param snapshotId: A non-empty snapshot id.
    """
    safe = quote(snapshotId, safe="")
    if safe in (".", ".."):
        safe = safe.replace(".", "%2E")
    if len(safe) > MAX_NAME:
        safe = safe[:180] + "%~" + hashlib.sha256(snapshotId.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return safe


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


class ImageFiles:
    """
    Creates the image files under one directory, safely; keeps at most one
    open (the one being written).
    """

    def __init__(self, directory: str) -> None:
        """
        @param directory: Where images go; created (mode 0700) if missing.
        @raise FetchError: If it cannot be opened.
        """
        self.directory = directory
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise FetchError(f"cannot create {directory}: {e.strerror}") from None
        try:
            self._root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise FetchError(f"cannot open {directory}: {e.strerror}") from None
        self._dirs: dict[str, int] = {"": self._root}
        self._fd = -1
        self._current: Optional[tuple[int, str, str]] = None  # dir fd, name, path shown

    def _snapshotDir(self, snapshotId: str) -> int:
        fd = self._dirs.get(snapshotId)
        if fd is not None:
            return fd
        safe = safeSnapshotDir(snapshotId)
        shown = os.path.join(self.directory, safe)
        try:
            os.mkdir(safe, 0o700, dir_fd=self._root)
        except FileExistsError:
            pass
        except OSError as e:
            raise FetchError(f"cannot create {shown}: {e.strerror}") from None
        try:
            fd = os.open(safe, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._root)
        except OSError as e:
            why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
            raise FetchError(f"cannot use {shown} for snapshot {snapshotId!r}: {why}") from None
        self._dirs[snapshotId] = fd
        return fd

    def create(self, snapshotId: str, name: str) -> None:
        """
        Create the file of a new image.

        @raise FetchError: If it exists already or cannot be created.
        """
        directory = self._snapshotDir(snapshotId)
        shown = os.path.join(self.directory, "" if not snapshotId else safeSnapshotDir(snapshotId), name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(name, flags, 0o600, dir_fd=directory)
        except FileExistsError:
            raise FetchError(f"{shown} already exists: fetch never overwrites a file") from None
        except OSError as e:
            raise FetchError(f"cannot create {shown}: {e.strerror}") from None
        self._current = (directory, name, shown)

    def write(self, data: bytes | memoryview) -> None:
        """
        Append to the current image's file.
        """
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            assert self._current is not None
            raise FetchError(f"cannot write {self._current[2]}: {e.strerror}") from None

    def finish(self) -> None:
        """
        The current image is complete and verified: close its file.
        """
        fd, self._fd, self._current = self._fd, -1, None
        os.close(fd)

    def discard(self) -> Optional[str]:
        """
        Close and remove the image file being written, if any.

        @return: Its path, if there was one.
        """
        current, self._current = self._current, None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if current is None:
            return None
        directory, name, shown = current
        try:
            os.unlink(name, dir_fd=directory)
        except OSError:
            pass
        return shown

    def close(self) -> None:
        """
        Close every descriptor.
        """
        self.discard()
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()


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
