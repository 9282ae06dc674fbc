"""
Tests for L{imgrelay.core.imagedata}.
"""

from __future__ import annotations

import mmap
import os

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.core.imagedata import FIRST_BLOCK, MAPPED_BLOCK, MAX_BLOCK, ImageData


class ImageDataTests(SynchronousTestCase):
    """
    L{ImageData} holds an image in a few growing blocks, filled in place.
    """

    def test_empty(self) -> None:
        """
        A new, closed image has no bytes and no pieces.
        """
        data = ImageData()
        data.close()
        self.assertEqual((data.size, data.tobytes(), data.pieces), (0, b"", []))

    def test_appendSmallPieces(self) -> None:
        """
        Small appends fill blocks that double from the first piece's size:
        the image holds about twice its size at most.
        """
        data = ImageData()
        expected = b"".join(bytes([i % 251]) * 7 for i in range(1000))
        for i in range(1000):
            data.append(bytes([i % 251]) * 7)
        self.assertEqual(data.size, 7000)
        self.assertEqual(data.tobytes(), expected)
        self.assertEqual(sum(len(p) for p in data.pieces), 7000)
        sizes = [len(b) for b in data._blocks]
        self.assertEqual(sizes[:4], [7, 7, 14, 28])
        self.assertLessEqual(sum(sizes), 2 * 7000)

    def test_firstBlockFitsFirstPiece(self) -> None:
        """
        The first block is as large as the first piece, up to
        L{FIRST_BLOCK}: a small image costs its size, not a whole block.
        """
        for first, expected in [(100, 100), (10000, 10000), (1 << 20, FIRST_BLOCK)]:
            data = ImageData()
            data.writable(first)
            self.assertEqual(len(data._blocks[0]), expected)

    def test_blocksGrow(self) -> None:
        """
        Blocks double from L{FIRST_BLOCK} up to L{MAX_BLOCK}, large ones
        being mappings; the content reads back whole.
        """
        content = os.urandom(40 << 20)
        data = ImageData()
        data.append(content)
        data.close()
        sizes = [len(p) for p in data.pieces]
        self.assertEqual(sizes[:3], [FIRST_BLOCK, FIRST_BLOCK, 2 * FIRST_BLOCK])
        self.assertEqual(max(sizes), MAX_BLOCK)
        self.assertEqual(sum(sizes), len(content))
        self.assertEqual(data.tobytes(), content)
        kinds = {type(b) for b in data._blocks if len(b) >= MAPPED_BLOCK}
        self.assertEqual(kinds, {mmap.mmap})

    def test_writableAndCommit(self) -> None:
        """
        Bytes written into L{ImageData.writable} views and committed are the
        content; a view is never longer than asked, nor empty.
        """
        data = ImageData()
        view = data.writable(5)
        self.assertEqual(len(view), 5)
        view[:3] = b"abc"
        data.commit(3)
        view = data.writable(1 << 30)
        self.assertGreater(len(view), 0)
        self.assertLessEqual(len(view), FIRST_BLOCK - 3)
        view[:2] = b"de"
        data.commit(2)
        self.assertEqual(data.tobytes(), b"abcde")
        self.assertEqual(data.size, 5)

    def test_closeTrimsSmallBlock(self) -> None:
        """
        Closing gives back the unused end of a bytearray block.
        """
        data = ImageData()
        data.append(b"x" * 100)
        data.close()
        self.assertEqual(len(data._blocks[-1]), 100)
        self.assertEqual(data.tobytes(), b"x" * 100)

    def test_closeKeepsMappedContent(self) -> None:
        """
        Closing an image whose last block is a partly used mapping keeps its
        content intact (the unused pages are released, not the used ones).
        """
        content = os.urandom((3 << 20) + 12345)
        data = ImageData()
        data.append(content)
        data.close()
        self.assertEqual(data.tobytes(), content)

    def test_closedRefusesWrites(self) -> None:
        """
        No space is handed out once the image is closed.
        """
        data = ImageData()
        data.close()
        self.assertRaises(ValueError, data.writable, 1)
