# -*- test-case-name: tests.cli.test_imagefiles -*-
"""
Where C{imgrelay fetch} writes images, and how, safely.

An image of snapshot C{""} (C{--stream}) is written to C{DIR/NAME}; any
other snapshot's to C{DIR/SAFE/NAME}, where C{SAFE} is L{safeSnapshotDir}
of the snapshot id. Every file is created relative to a directory
descriptor with C{O_CREAT|O_EXCL|O_NOFOLLOW}, and snapshot directories are
opened with C{O_NOFOLLOW}: nothing is written outside C{DIR}, through a
symbolic link, or over an existing file. The names themselves are checked
before they get here (L{imgrelay.core.names}).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import Optional
from urllib.parse import quote

from imgrelay.core.names import MAX_NAME


class FetchError(Exception):
    """
    The fetch failed; the message is one line for the user.
    """


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


def _isLink(name: str, directory: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False


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
            why = "it is a symbolic link" if e.errno == errno.ELOOP or _isLink(safe, self._root) else e.strerror
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
