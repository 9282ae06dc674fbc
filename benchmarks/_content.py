"""
What the benchmarks move: image content generated once, cheap to write and
to check, and the digests that prove every byte arrived.

Content is never built per run: an image's byte stream is a sequence of
views into one 17 MiB random block (L{Source}), each 1 MiB chunk taken at a
different, unaligned offset, so the writer only slices memoryviews, a
misplaced or repeated chunk changes the digest, and two images of one
scenario never share a chunk.
"""

from __future__ import annotations

import hashlib
import mmap
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional, Sequence

import attrs

#: The clients' read and write size, and the content's chunk size.
BLOCK = 1 << 20

#: Distinct chunk start offsets in the source block.
_SPAN = 16 << 20
_STRIDE = 12289  # odd, so chunk offsets only repeat every 2**24 chunks
_SHIFT = 977  # chunks between two images' offset sequences

#: How much one digest task covers; large images are hashed in parallel.
SEGMENT = 64 << 20


class Source:
    """
    The random block every image's content is cut from.
    """

    def __init__(self, seed: int = 5) -> None:
        """
        @param seed: Makes the content the same from one run to the next.
        """
        self.data = random.Random(seed).randbytes(_SPAN + BLOCK)
        self.view = memoryview(self.data)


@attrs.frozen
class ImageSpec:
    """
    One image of a scenario.

    @ivar name: Its file name, as CRIU would ask for it.
    @ivar size: Its length in bytes.
    @ivar index: Selects its content (unique within a scenario).
    @ivar literal: Real content (from the bundled trace), used instead of
        generated content when set.
    """

    name: str
    size: int
    index: int
    literal: Optional[bytes] = None


def pieces(source: Source, spec: ImageSpec, lo: int = 0, hi: Optional[int] = None) -> Iterator[memoryview]:
    """
    The image's bytes C{[lo, hi)} as views, none longer than L{BLOCK}.

    @param source: The random block.
    @param spec: The image.
    @param lo: The first byte.
    @param hi: One past the last byte (the image's end by default).
    """
    if hi is None:
        hi = spec.size
    if spec.literal is not None:
        view = memoryview(spec.literal)
        for p in range(lo, hi, BLOCK):
            yield view[p : min(p + BLOCK, hi)]
        return
    p = lo
    while p < hi:
        chunk, off = divmod(p, BLOCK)
        n = min(BLOCK - off, hi - p)
        start = ((chunk + spec.index * _SHIFT) * _STRIDE) % _SPAN + off
        yield source.view[start : start + n]
        p += n


def _segments(size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + SEGMENT, size)) for lo in range(0, size, SEGMENT)] or [(0, 0)]


def _hashPieces(views: Iterable[memoryview]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for v in views:
        h.update(v)
    return h.digest()


def digests(sizes: dict[str, int], viewsOf: Callable[[str, int, int], Iterable[memoryview]]) -> dict[str, bytes]:
    """
    BLAKE2b digests of many images, on every core.

    An image's digest is the BLAKE2b of the BLAKE2b digests of its 64 MiB
    segments, so that one large image is hashed by several threads
    (C{hashlib} releases the GIL); the writer's side and the reader's side
    are computed the same way.

    @param sizes: Each image's length.
    @param viewsOf: Gives the bytes C{[lo, hi)} of an image as views.
    @return: Each image's digest.
    """
    jobs = [(name, lo, hi) for name, size in sizes.items() for lo, hi in _segments(size)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(lambda job: _hashPieces(viewsOf(*job)), jobs))
    combined: dict[str, hashlib.blake2b] = {}
    for (name, _, _), part in zip(jobs, parts):
        combined.setdefault(name, hashlib.blake2b(digest_size=32)).update(part)
    return {name: h.digest() for name, h in combined.items()}


def expectedDigests(source: Source, images: Sequence[ImageSpec]) -> dict[str, bytes]:
    """
    @return: The digest of every image as the writer sends it.
    """
    byName = {spec.name: spec for spec in images}
    return digests(
        {spec.name: spec.size for spec in images},
        lambda name, lo, hi: pieces(source, byName[name], lo, hi),
    )


_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


class ReceiveBuffer:
    """
    Where readers put what they receive: one shared anonymous mapping,
    faulted in when made (outside any timed part), visible to the parent
    when the reader is a forked process, and reused by every run.
    """

    def __init__(self, size: int) -> None:
        """
        @param size: Bytes to map; the largest scenario's total.
        """
        self.size = max(size, mmap.PAGESIZE)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_ANONYMOUS", 0x20) | getattr(mmap, "MAP_POPULATE", 0)
        self.map = mmap.mmap(-1, self.size, flags=flags)
        self.view = memoryview(self.map)

    def prefault(self, size: int) -> None:
        """
        Map the first C{size} bytes into this process's page tables.

        A forked child does not inherit the page-table entries of a shared
        mapping: without this, a reader in a process would take a page
        fault per 4 KiB inside the timed part.
        """
        length = min(self.size, (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE)
        if length:
            try:
                self.map.madvise(_MADV_POPULATE_WRITE, 0, length)
            except OSError:  # before Linux 5.14: touch every page instead
                for p in range(0, length, mmap.PAGESIZE):
                    self.view[p] = 0


def warmMemory(size: int) -> float:
    """
    Touch C{size} bytes of fresh memory and free them at once.

    This machine is a VM whose balloon driver hands free guest memory back
    to the host within seconds; the next first touch of such a page costs
    several times a normal page fault (about 2 s/GiB more, measured). Run
    just before a measured run, this leaves enough recently touched free
    memory for the daemons, so that baseline and imgrelay face the same
    memory, however long the pause before them was.

    @return: The seconds it took.
    """
    started = time.monotonic()
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20) | getattr(mmap, "MAP_POPULATE", 0)
    held = [mmap.mmap(-1, min(1 << 30, size - lo), flags=flags) for lo in range(0, size, 1 << 30)]
    for m in held:  # all held at once: freeing each before the next would reuse its pages
        m.close()
    return time.monotonic() - started


def layout(images: Sequence[ImageSpec]) -> dict[str, tuple[int, int]]:
    """
    @return: Each image's place in the receive buffer: (offset, size),
        offsets 64-byte aligned.
    """
    places: dict[str, tuple[int, int]] = {}
    offset = 0
    for spec in images:
        places[spec.name] = (offset, spec.size)
        offset += (spec.size + 63) // 64 * 64
    return places


def layoutSize(places: dict[str, tuple[int, int]]) -> int:
    """
    @return: The buffer size a layout needs.
    """
    return max((off + (size + 63) // 64 * 64 for off, size in places.values()), default=0)
