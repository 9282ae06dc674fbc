# -*- test-case-name: tests.proxy.test_outbound -*-
"""
The proxy's record of the session stream: every byte it sent after its
first hello, kept until the cache says it has taken it, so that a new link
can carry on exactly where the cache stopped.

Nothing here does I/O; the pieces are the buffers the link was handed
(C{bytes}, or views of the pipe read buffers), held by reference.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence, Union

Buffer = Union[bytes, memoryview]


class BadOffset(ValueError):
    """
    The cache named an offset of the session stream the proxy cannot honour.
    """


class OutboundLog:
    """
    The unacknowledged end of the session stream.

    @ivar appended: Bytes of the stream so far.
    @ivar acked: Bytes the cache has taken; everything before is forgotten.
    """

    def __init__(self) -> None:
        self._pieces: deque[tuple[int, Buffer]] = deque()
        self.appended = 0
        self.acked = 0

    @property
    def held(self) -> int:
        """
        @return: Bytes sent but not yet taken by the cache.
        """
        return self.appended - self.acked

    def append(self, pieces: Iterable[Buffer]) -> None:
        """
        Add C{pieces} to the end of the stream. Their buffers must not change
        until they are acknowledged.
        """
        for piece in pieces:
            n = len(piece)
            if n:
                self.appended += n
                self._pieces.append((self.appended, piece))

    def _check(self, offset: int) -> None:
        if not self.acked <= offset <= self.appended:
            raise BadOffset(
                f"offset {offset} is outside the unacknowledged stream "
                f"[{self.acked}, {self.appended}]"
            )

    def ack(self, offset: int) -> None:
        """
        The cache has taken the stream up to C{offset}: forget it.

        @raise BadOffset: If C{offset} goes back, or past what was sent.
        """
        self._check(offset)
        self.acked = offset
        pieces = self._pieces
        while pieces and pieces[0][0] <= offset:
            pieces.popleft()

    def since(self, offset: int) -> Sequence[Buffer]:
        """
        The stream from C{offset} on, to send again.

        @raise BadOffset: If C{offset} is before what is still held, or past
            what was sent.
        """
        self._check(offset)
        out: list[Buffer] = []
        for end, piece in self._pieces:
            if end <= offset:
                continue
            start = end - len(piece)
            out.append(piece if start >= offset else memoryview(piece)[offset - start :])
        return out
