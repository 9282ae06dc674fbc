# -*- test-case-name: tests.cli.test_send -*-
"""
C{imgrelay send}: send an image directory that already exists (every
regular file in it) to a cache over the link protocol, as a proxy would,
with the same acknowledgements and final handshake.

It reuses the proxy's L{ProxySession}, link and L{LinkDriver}, so a broken
link is dialled again and the session resumes, as with the proxy. Each file is read by a
L{FileReader}, a push producer that reads 1 MiB per reactor turn and stops
whenever the link is full.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from imgrelay.cli.progress import Progress
from imgrelay.core.errors import SessionError
from imgrelay.core.interfaces import IOutgoingImage
from imgrelay.core.names import BadName, checkId, checkImageName
from imgrelay.proxy.link import ProxyLinkFactory
from imgrelay.proxy.packer import Compression
from imgrelay.proxy.reconnect import DEFAULT_GIVE_UP, LinkDriver
from imgrelay.core.limits import DEFAULT_IDLE_TIMEOUT
from imgrelay.proxy.session import ProxySession
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.transport.tls import TLSFiles, clientEndpoint, hostOf

#: How much a reader reads per reactor turn.
BLOCK = 1 << 20


class SendError(Exception):
    """
    The send failed; the message is one line for the user.
    """


def listImages(directory: str) -> list[tuple[str, int]]:
    """
    The images of a directory: every regular file in it (symbolic links
    and subdirectories are not followed), sorted by name.

    @return: Each file's name and size.
    @raise SendError: If the directory cannot be read or a name is not an
        acceptable image name.
    """
    try:
        entries = list(os.scandir(directory))
    except OSError as e:
        raise SendError(f"cannot read {directory}: {e.strerror}") from None
    found = []
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            try:
                checkImageName(entry.name)
            except BadName as e:
                raise SendError(f"{os.path.join(directory, entry.name)}: {e}") from None
            found.append((entry.name, entry.stat(follow_symlinks=False).st_size))
    return sorted(found)


@implementer(IPushProducer)
class FileReader:
    """
    Read one open file into an outgoing image, L{BLOCK} bytes per reactor
    turn, while not paused.

    @ivar done: Fires with the bytes read once the image is closed, or
        fails with the error that stopped it.
    """

    def __init__(self, reactor: Any, fd: int, image: IOutgoingImage, progress: Progress) -> None:
        """
        @param reactor: Where reads are scheduled.
        @param fd: The file, open for reading; closed when done.
        @param image: Where its bytes go.
        @param progress: Told of every block.
        """
        self._reactor = reactor
        self._fd = fd
        self._image = image
        self._progress = progress
        self._call: Optional[IDelayedCall] = None
        self._paused = True
        self.size = 0
        self.done: Deferred[int] = Deferred()

    def resumeProducing(self) -> None:
        """
        Read again, from the next reactor turn.
        """
        self._paused = False
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and self._fd >= 0 and not self._paused:
            self._call = self._reactor.callLater(0, self._read)

    def pauseProducing(self) -> None:
        """
        The link is full: read nothing until resumed.
        """
        self._paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def stopProducing(self) -> None:
        """
        Give up the file.
        """
        self.stop(Failure(SendError(f"reading {self._image.name} was stopped")))

    def stop(self, reason: Failure) -> None:
        """
        Give up the file; L{done} fails with C{reason}.
        """
        self.pauseProducing()
        if self._close():
            self.done.errback(reason)

    def _close(self) -> bool:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return False
        os.close(fd)
        return True

    def _read(self) -> None:
        self._call = None
        try:
            data = os.read(self._fd, BLOCK)
        except OSError as e:
            self.stop(Failure(SendError(f"cannot read {self._image.name}: {e.strerror}")))
            return
        if not data:
            self._close()
            self._image.close()
            self.done.callback(self.size)
            return
        self.size += len(data)
        self._progress.update(len(data))
        self._image.write(data)
        self._schedule()


def _dial(
    reactor: Any, endpoint: IStreamClientEndpoint, session: ProxySession, reconnectTimeout: float = DEFAULT_GIVE_UP,
    compression: Optional[Compression] = None,
) -> LinkDriver:
    """
    Connect C{session} to the cache as the proxy does: dial, and after a
    broken link dial again and resume; give the session up after
    C{reconnectTimeout} seconds without a link the cache accepted.

    @return: The started driver.
    """
    driver = LinkDriver(
        endpoint, ProxyLinkFactory(session, reactor, idleTimeout=DEFAULT_IDLE_TIMEOUT, compression=compression),
        reactor,
        repr(endpoint), reconnectTimeout,
    )
    driver.start()
    return driver


def linkEndpoint(
    reactor: Any, to: str, tls: Optional[TLSFiles] = None, tlsHostname: Optional[str] = None
) -> IStreamClientEndpoint:
    """
    The cache's link as a client endpoint, wrapped in TLS if asked.

    @raise SendError: For a malformed endpoint string, unreadable TLS files,
        or TLS without a host name to check.
    """
    try:
        endpoint = clientFromString(reactor, to)
    except (ValueError, KeyError, TypeError) as e:
        raise SendError(f"--to: {to!r} is not a valid client endpoint: {e}") from None
    if tls is None:
        return endpoint
    hostname = tlsHostname or hostOf(to)
    if not hostname:
        raise SendError("TLS needs the cache's host name to check its certificate: give --tls-hostname")
    try:
        return clientEndpoint(endpoint, hostname, tls)
    except ValueError as e:
        raise SendError(str(e)) from None


async def send(
    reactor: Any, directory: str, endpoint: IStreamClientEndpoint, sessionName: str, snapshotId: str,
    progress: Progress, reconnectTimeout: float = DEFAULT_GIVE_UP, compression: Optional[Compression] = None,
) -> SessionOutcome:
    """
    Send every image of C{directory} as one session, and wait for the
    cache's confirmation.

    @param snapshotId: The snapshot the images belong to (C{""} for
        C{--stream} restores); a non-empty one is also pushed onto the
        session's snapshot list.
    @param reconnectTimeout: Seconds without a link the cache accepted
        after which the send fails.
    @param compression: How to compress the link; None for not at all.
    @return: What the cache confirmed.
    @raise SendError: If anything failed, saying what.
    """
    try:
        checkId("snapshot id", snapshotId)
        session = ProxySession(sessionName, reactor.seconds)
    except BadName as e:
        raise SendError(str(e)) from None
    images = listImages(directory)
    current: list[FileReader] = []

    def over(result: object) -> None:
        if isinstance(result, Failure):
            for reader in current:
                reader.stop(result)

    session.addOverObserver(over)
    # The outcome is awaited at the end; an early failure is raised there.
    result = session.result
    try:
        _dial(reactor, endpoint, session, reconnectTimeout, compression)
        await session.ready
        if snapshotId:
            session.pushSnapshot(snapshotId)
        progress.start(sum(size for _, size in images), f"session {sessionName}, {len(images)} images")
        for name, _ in images:
            fd = _openImage(directory, name)
            image = session.openImage(snapshotId, name)
            reader = FileReader(reactor, fd, image, progress)
            current[:] = [reader]
            image.attachProducer(reader)
            await reader.done
        current.clear()
        session.finish()
        return await result
    except SessionError as e:
        raise SendError(str(e)) from None
    except SendError as e:
        session.abort(str(e))
        raise
    finally:
        progress.close()
        result.addErrback(lambda f: None)


def _openImage(directory: str, name: str) -> int:
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise SendError(f"cannot open {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SendError(f"{path} is no longer a regular file")
    return fd
