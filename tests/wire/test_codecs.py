"""
Tests for L{imgrelay.wire.codecs}: each encoding round-trips, and decoding
never yields (or allocates for) more than the announced size.
"""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.core.errors import ProtocolError
from imgrelay.wire import codecs
from imgrelay.wire.codecs import LZ4, RAW, ZSTD, BadChunk, available, decode, encode, parse


def _heapish(size: int) -> bytes:
    # Text-like, repetitive bytes, as a heap's pages are.
    rng = random.Random(size)
    words = [b"item-%d" % rng.randrange(500) for _ in range(64)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b"\0"
    return bytes(out[:size])


class CodecTests(SynchronousTestCase):
    """
    Encode and decode.
    """

    def test_available(self) -> None:
        """
        Both packages are dependencies: both encodings are here, Zstandard
        first.
        """
        self.assertEqual(available(), (ZSTD, LZ4))

    def test_roundTrip(self) -> None:
        """
        Each encoding decodes to what was encoded, and shrinks heap-like
        bytes.
        """
        data = _heapish(1 << 20)
        for encoding in available():
            payload = encode(encoding, memoryview(data))
            self.assertLess(len(payload), len(data) // 2, codecs.NAMES[encoding])
            self.assertEqual(decode(encoding, payload, len(data)), data)

    def test_empty(self) -> None:
        """
        An empty chunk round-trips.
        """
        for encoding in available():
            self.assertEqual(decode(encoding, encode(encoding, b""), 0), b"")

    def test_wrongSize(self) -> None:
        """
        A payload that decodes to more or fewer bytes than announced is
        refused, as a protocol error that ends the link.
        """
        data = _heapish(100_000)
        for encoding in available():
            payload = encode(encoding, data)
            for size in (len(data) - 1, len(data) + 1, 10):
                with self.assertRaises(BadChunk) as raised:
                    decode(encoding, payload, size)
                self.assertIsInstance(raised.exception, ProtocolError)

    def test_zstdWithoutSize(self) -> None:
        """
        A Zstandard frame that does not state its size is refused: it
        could decode to anything.
        """
        import zstandard

        payload = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 1000)
        with self.assertRaises(BadChunk) as raised:
            decode(ZSTD, payload, 1000)
        self.assertIn("no size", str(raised.exception))

    def test_zstdBomb(self) -> None:
        """
        A frame that says (truthfully) it holds 1 GiB is refused for a
        chunk announced at 1 MiB, without decoding it.
        """
        import zstandard

        bomb = zstandard.ZstdCompressor().compress(bytes(1 << 30))
        self.assertLess(len(bomb), 1 << 20)
        with self.assertRaises(BadChunk):
            decode(ZSTD, bomb, 1 << 20)

    def test_lz4Bomb(self) -> None:
        """
        An LZ4 block of 64 MiB of zeros announced as 1 MiB is refused.
        """
        bomb = encode(LZ4, bytes(64 << 20))
        with self.assertRaises(BadChunk):
            decode(LZ4, bomb, 1 << 20)

    def test_trailingBytes(self) -> None:
        """
        Bytes after the Zstandard frame are refused, not ignored.
        """
        payload = encode(ZSTD, b"abc" * 100)
        for extra in (b"x", payload):
            with self.assertRaises(BadChunk):
                decode(ZSTD, payload + extra, 300)

    def test_truncated(self) -> None:
        """
        A frame cut short is refused, and the decoder this thread keeps
        decodes the next whole chunk correctly after it.
        """
        data = _heapish(300_000)
        for encoding in available():
            payload = encode(encoding, data)
            for cut in (1, len(payload) // 2, len(payload) - 1):
                with self.assertRaises(BadChunk):
                    decode(encoding, payload[:cut], len(data))
                self.assertEqual(decode(encoding, payload, len(data)), data)

    def test_views(self) -> None:
        """
        A payload may come as a C{bytearray} or a C{memoryview} (the
        cache collects it into a C{bytearray}).
        """
        data = _heapish(50_000)
        for encoding in available():
            payload = encode(encoding, data)
            for view in (bytearray(payload), memoryview(bytearray(payload))):
                self.assertEqual(decode(encoding, view, len(data)), data)

    def test_unknownEncoding(self) -> None:
        """
        RAW and unknown numbers cannot be decoded or encoded.
        """
        with self.assertRaises(BadChunk):
            decode(RAW, b"abc", 3)
        with self.assertRaises(BadChunk):
            decode(7, b"abc", 3)
        with self.assertRaises(ValueError):
            encode(RAW, b"abc")

    def test_random(self) -> None:
        """
        Random bytes round-trip, though they do not shrink.
        """
        data = os.urandom(200_000)
        for encoding in available():
            payload = encode(encoding, data)
            self.assertGreaterEqual(len(payload), len(data))
            self.assertEqual(decode(encoding, payload, len(data)), data)

    def test_parse(self) -> None:
        """
        C{--compress} names.
        """
        self.assertEqual([parse(n) for n in ("auto", "none", "zstd", "lz4")], [None, RAW, ZSTD, LZ4])
        with self.assertRaises(ValueError):
            parse("gzip")


class DecodeFuzzTests(SynchronousTestCase):
    """
    Hostile payloads: decoding raises L{BadChunk} or yields exactly the
    announced size, nothing else.
    """

    @settings(max_examples=300, deadline=None)
    @given(
        encoding=st.sampled_from([ZSTD, LZ4]),
        seed=st.binary(min_size=0, max_size=3000),
        mutations=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
        cut=st.integers(0, 10_000),
        size=st.integers(0, 1 << 16),
    )
    def test_mutated(self, encoding: int, seed: bytes, mutations: list[tuple[int, int]], cut: int, size: int) -> None:
        payload = bytearray(encode(encoding, seed * 7))
        for at, value in mutations:
            if payload:
                payload[at % len(payload)] = value
        payload = payload[: max(cut, 1)] if cut < len(payload) else payload
        try:
            out = decode(encoding, bytes(payload), size)
        except BadChunk:
            return
        self.assertEqual(len(out), size)
