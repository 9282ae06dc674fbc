"""
Tests for L{imgrelay.wire.criulink}: CRIU's own proxy-to-cache format, and
the images and snapshot lists the other CRIU-format tests send.
"""

from __future__ import annotations


from twisted.trial.unittest import SynchronousTestCase

from imgrelay.wire.criulink import (
    O_APPEND,
    O_WRONLY,
    PARENT,
    parseSnapshotList,
    remoteHeader,
)
from imgrelay.wire.criu import frame
from imgrelay.wire.framing import FramingError
from imgrelay.wire.pb import criu_pb2



#: The spec's vector: remote header pages-1.img /mig/d1 1 118784.
VECTOR = bytes.fromhex(
    "1c 00 00 00 0a 0b 70 61 67 65 73 2d 31 2e 69 6d 67 12 07 2f 6d 69 67 2f 64 31 18 01 20 80 a0 07"
)

#: The spec's vector: snapshot id record "/mig/d1".
RECORD = bytes.fromhex("09 00 00 00 0a 07 2f 6d 69 67 2f 64 31")

#: 118784 bytes of content, not all alike.
PAGES = bytes(range(256)) * 464


def image(snapshotId: str, name: str, content: bytes, mode: int = O_WRONLY) -> bytes:
    """
    @return: One image as CRIU's format sends it: header, then content.
    """
    return remoteHeader(snapshotId, name, mode, len(content)) + content


def snapshots(*ids: str) -> bytes:
    """
    @return: An append to C{parent} holding a record for each of C{ids}.
    """
    return image("", PARENT, b"".join(frame(criu_pb2.SnapshotIdRecord(snapshot_id=i)) for i in ids), O_APPEND)


class EncodingTests(SynchronousTestCase):
    """
    Tests for the encoding of CRIU's proxy-to-cache format.
    """

    def test_snapshotVector(self) -> None:
        """
        The spec's snapshot id record vector parses to its id.
        """
        self.assertEqual(parseSnapshotList(RECORD), ["/mig/d1"])
        self.assertRaises(FramingError, parseSnapshotList, RECORD[:-1])
