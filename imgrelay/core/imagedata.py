# -*- test-case-name: tests.core.test_imagedata -*-
"""
An image's bytes in the cache's memory: a few blocks that grow with the
image, filled in place.

The link receiver asks for L{ImageData.writable} space and receives straight
into it (C{recv_into}), so a byte arriving from the network is copied once,
by the kernel. The first block fits the first piece (up to
64 KiB), then blocks double up to 8 MiB; from 1 MiB on they
are anonymous mappings populated in bulk (C{MAP_POPULATE}), which the
kernel faults in about twice as fast as memory touched page by page. When
an image closes, the unused end of its last block is given back.
"""

from __future__ import annotations

import mmap
from typing import Union

#: The largest first block: an image's first block is the size of its first
#: piece, up to this.
FIRST_BLOCK = 64 << 10

#: Blocks stop growing at this size.
MAX_BLOCK = 8 << 20

#: Blocks this large or larger are mappings rather than bytearrays.
MAPPED_BLOCK = 1 << 20

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_PAGE = mmap.PAGESIZE

Block = Union[bytearray, mmap.mmap]


def _allocate(size: int) -> Block:
    if size >= MAPPED_BLOCK:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    return bytearray(size)


class ImageData:
    """
    See the module docstring.

    @ivar size: Bytes held.
    """

    __slots__ = ("size", "_blocks", "_fill", "_closed", "_frozen")

    def __init__(self) -> None:
        self.size = 0
        self._blocks: list[Block] = []
        self._fill = 0  # bytes used in the last block
        self._closed = False
        self._frozen: list[memoryview] = []  # an earlier version's content

    @classmethod
    def continuing(cls, earlier: ImageData) -> ImageData:
        """
        New content that starts with C{earlier}'s bytes (shared, not
        copied), for an append.

        @param earlier: A closed image's data.
        """
        data = cls()
        data._frozen = earlier.pieces
        data.size = earlier.size
        return data

    def writable(self, wanted: int) -> memoryview:
        """
        Free space at the end of the image, to fill and then L{commit}.

        @param wanted: How many bytes are coming (a hint: the view may be
            shorter, never longer).
        @return: A writable view of at most C{wanted} bytes, never empty
            when C{wanted} is positive.
        """
        if self._closed:
            raise ValueError("image data is closed")
        if not self._blocks or self._fill == len(self._blocks[-1]):
            # A block as large as what the image holds already (so blocks
            # double), at least the piece coming up to FIRST_BLOCK (so a
            # small image takes what it needs), at most MAX_BLOCK.
            size = min(max(self.size, min(wanted, FIRST_BLOCK), 1), MAX_BLOCK)
            self._blocks.append(_allocate(size))
            self._fill = 0
        block = self._blocks[-1]
        end = min(len(block), self._fill + wanted)
        return memoryview(block)[self._fill : end]

    def commit(self, n: int) -> None:
        """
        C{n} bytes were written at the start of the last L{writable} view.
        """
        self._fill += n
        self.size += n

    def append(self, data: Union[bytes, memoryview, bytearray]) -> None:
        """
        Copy the image's next bytes in.
        """
        view = memoryview(data)
        while view:
            target = self.writable(len(view))
            n = len(target)
            target[:] = view[:n]
            self.commit(n)
            view = view[n:]

    def close(self) -> None:
        """
        The image is complete: give back the unused end of the last block.
        """
        if self._closed:
            return
        self._closed = True
        if not self._blocks:
            return
        last = self._blocks[-1]
        if isinstance(last, bytearray):
            try:
                del last[self._fill :]
            except BufferError:
                pass  # a view of it is still alive: keep the slack
        elif self._fill < len(last):
            start = -(-self._fill // _PAGE) * _PAGE
            if start < len(last):
                last.madvise(mmap.MADV_DONTNEED, start, len(last) - start)

    @property
    def pieces(self) -> list[memoryview]:
        """
        @return: The content, as views of the blocks, in order.
        """
        views = [memoryview(b) for b in self._blocks]
        if views:
            views[-1] = views[-1][: self._fill]
        return self._frozen + views

    def tobytes(self) -> bytes:
        """
        @return: The whole content as one C{bytes} (for tests and tools).
        """
        return b"".join(self.pieces)
