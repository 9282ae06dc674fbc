"""
Tests for L{imgrelay.core.integrity}: the per-image CRC-32C and the session's
manifest digest.
"""

from __future__ import annotations

import hashlib
import struct

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from imgrelay.core.integrity import ManifestEntry, RunningChecksum, manifestDigest

_PROPERTY = settings(max_examples=200, deadline=None, database=None)


class RunningChecksumTests(SynchronousTestCase):
    """
    L{RunningChecksum} tracks the size and CRC-32C of the bytes it is given.
    """

    def test_initial(self) -> None:
        """
        Before any bytes the size and the CRC are zero.
        """
        c = RunningChecksum()
        self.assertEqual((c.size, c.crc), (0, 0))

    def test_checkValue(self) -> None:
        """
        The CRC of C{b"123456789"} is CRC-32C's check value, 0xE3069283
        (which is not CRC-32's 0xCBF43926).
        """
        c = RunningChecksum()
        c.update(b"123456789")
        self.assertEqual(c.crc, 0xE3069283)
        self.assertEqual(c.size, 9)

    def test_knownValues(self) -> None:
        """
        Other published CRC-32C values (RFC 3720, B.4): 32 zero bytes and 32
        0xFF bytes.
        """
        for data, crc in [(b"\x00" * 32, 0x8A9136AA), (b"\xff" * 32, 0x62A8AB43)]:
            c = RunningChecksum()
            c.update(data)
            self.assertEqual(c.crc, crc)

    def test_emptyUpdate(self) -> None:
        """
        Updating with no bytes changes nothing.
        """
        c = RunningChecksum()
        c.update(b"abc")
        before = (c.size, c.crc)
        c.update(b"")
        self.assertEqual((c.size, c.crc), before)

    def test_incrementalBytewise(self) -> None:
        """
        Feeding a byte at a time gives the same CRC and size as all at once.
        """
        c = RunningChecksum()
        for i in range(9):
            c.update(b"123456789"[i : i + 1])
        self.assertEqual((c.size, c.crc), (9, 0xE3069283))

    def test_memoryview(self) -> None:
        """
        Memoryviews (what L{PayloadChunk} carries) are accepted and counted
        by their length.
        """
        data = memoryview(b"xx123456789yy")[2:-2]
        c = RunningChecksum()
        c.update(data)
        self.assertEqual((c.size, c.crc), (9, 0xE3069283))

    @_PROPERTY
    @given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=10))
    def test_incrementalEqualsOneShot(self, data: bytes, cuts: list[int]) -> None:
        """
        Any split of the data gives the CRC and size of a single update.
        """
        whole = RunningChecksum()
        whole.update(data)
        bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
        pieces = RunningChecksum()
        for a, b in zip(bounds, bounds[1:]):
            pieces.update(data[a:b])
        self.assertEqual((pieces.size, pieces.crc), (whole.size, whole.crc))
        self.assertEqual(whole.size, len(data))

    def test_sensitive(self) -> None:
        """
        Changing one bit changes the CRC.
        """
        a, b = RunningChecksum(), RunningChecksum()
        a.update(b"123456789")
        b.update(b"123456788")
        self.assertNotEqual(a.crc, b.crc)


_entry = st.builds(
    ManifestEntry,
    snapshotId=st.text(max_size=8),
    name=st.text(max_size=8),
    size=st.integers(0, 2**64 - 1),
    crc=st.integers(0, 2**32 - 1),
)


def _reference(entries: list[ManifestEntry]) -> bytes:
    """
    The digest as its docstring defines it, written out independently.
    """
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: (e.snapshotId, e.name)):
        for s in (e.snapshotId, e.name):
            b = s.encode("utf-8")
            h.update(len(b).to_bytes(4, "big") + b)
        h.update(e.size.to_bytes(8, "big") + e.crc.to_bytes(4, "big"))
    return h.digest()


class ManifestDigestTests(SynchronousTestCase):
    """
    L{manifestDigest} binds every image's snapshot id, name, size and CRC.
    """

    def entries(self) -> list[ManifestEntry]:
        return [
            ManifestEntry("/mig/d1", "pages-1.img", 118784, 0x12345678),
            ManifestEntry("/mig/d1", "core-11105.img", 700, 0xDEADBEEF),
            ManifestEntry("/mig/d2", "pages-1.img", 4096, 1),
            ManifestEntry("", "inventory.img", 0, 0),
        ]

    def test_empty(self) -> None:
        """
        No entries is the SHA-256 of nothing.
        """
        self.assertEqual(manifestDigest([]), hashlib.sha256(b"").digest())

    def test_knownEncoding(self) -> None:
        """
        One entry is hashed as length-prefixed UTF-8 snapshot id and name,
        then the size as a big-endian u64 and the CRC as a big-endian u32.
        """
        encoded = b"\x00\x00\x00\x02d1" + b"\x00\x00\x00\x05a.img" + struct.pack("!QI", 5, 7)
        self.assertEqual(
            manifestDigest([ManifestEntry("d1", "a.img", 5, 7)]),
            hashlib.sha256(encoded).digest(),
        )

    def test_length(self) -> None:
        """
        The digest is 32 bytes.
        """
        self.assertEqual(len(manifestDigest(self.entries())), 32)

    def test_iterable(self) -> None:
        """
        Any iterable of entries is accepted, such as a generator.
        """
        self.assertEqual(manifestDigest(e for e in self.entries()), manifestDigest(self.entries()))

    def test_orderIndependent(self) -> None:
        """
        The digest does not depend on the order the entries come in.
        """
        entries = self.entries()
        expected = manifestDigest(entries)
        self.assertEqual(manifestDigest(reversed(entries)), expected)
        self.assertEqual(manifestDigest(entries[1:] + entries[:1]), expected)

    @_PROPERTY
    @given(entries=st.lists(_entry, max_size=8, unique_by=lambda e: (e.snapshotId, e.name)), data=st.data())
    def test_orderIndependentProperty(self, entries: list[ManifestEntry], data: st.DataObject) -> None:
        """
        Any permutation of entries with distinct (snapshot id, name) gives
        the same digest, which is the documented encoding.
        """
        shuffled = data.draw(st.permutations(entries))
        self.assertEqual(manifestDigest(shuffled), manifestDigest(entries))
        self.assertEqual(manifestDigest(entries), _reference(entries))

    def test_everyFieldCounts(self) -> None:
        """
        Changing any one field of any one entry changes the digest.
        """
        entries = self.entries()
        original = manifestDigest(entries)
        changes = [
            {"snapshotId": "/mig/d3"},
            {"name": "pages-2.img"},
            {"size": 118785},
            {"crc": 0x12345679},
        ]
        for i in range(len(entries)):
            for change in changes:
                changed = list(entries)
                changed[i] = attrs.evolve(entries[i], **change)  # type: ignore[arg-type]
                self.assertNotEqual(manifestDigest(changed), original, (i, change))

    def test_entryCountCounts(self) -> None:
        """
        Dropping or adding an entry changes the digest.
        """
        entries = self.entries()
        original = manifestDigest(entries)
        self.assertNotEqual(manifestDigest(entries[:-1]), original)
        self.assertNotEqual(manifestDigest([*entries, ManifestEntry("x", "y", 0, 0)]), original)

    def test_unambiguousNames(self) -> None:
        """
        Moving bytes between the snapshot id and the name, or between
        entries, changes the digest.
        """
        pairs = [
            ([ManifestEntry("a", "bc", 1, 1)], [ManifestEntry("ab", "c", 1, 1)]),
            ([ManifestEntry("", "abc", 1, 1)], [ManifestEntry("abc", "", 1, 1)]),
            (
                [ManifestEntry("s", "a", 0, 0), ManifestEntry("s", "bc", 0, 0)],
                [ManifestEntry("s", "ab", 0, 0), ManifestEntry("s", "c", 0, 0)],
            ),
        ]
        for left, right in pairs:
            self.assertNotEqual(manifestDigest(left), manifestDigest(right), (left, right))

    def test_unambiguousNumbers(self) -> None:
        """
        Size and CRC are fixed-width: a name ending in bytes that look like a
        size cannot stand in for one.
        """
        a = ManifestEntry("s", "n", 1, 0)
        b = ManifestEntry("s", "n\x00", 0, 0)
        self.assertNotEqual(manifestDigest([a]), manifestDigest([b]))
        self.assertNotEqual(
            manifestDigest([ManifestEntry("s", "n", 2**32, 0)]),
            manifestDigest([ManifestEntry("s", "n", 0, 1)]),
        )

    def test_utf8(self) -> None:
        """
        Names are hashed as UTF-8, their length counted in bytes.
        """
        name = "p\u00e9"
        encoded = b"\x00\x00\x00\x00" + b"\x00\x00\x00\x03" + name.encode("utf-8") + struct.pack("!QI", 0, 0)
        self.assertEqual(manifestDigest([ManifestEntry("", name, 0, 0)]), hashlib.sha256(encoded).digest())
