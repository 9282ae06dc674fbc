# -*- test-case-name: tests.wire.test_codecs -*-
"""
The encodings a chunk's payload may have on the link (C{Encoding} in
C{link.proto}): which this process can use, and encoding and decoding one
chunk. Decoding is bounded by the size the chunk's header announced: a
payload that would decode to anything else is refused before it costs more
memory than that.

Zstandard (the C{zstandard} package) at level 1, and LZ4 blocks (the
C{lz4} package): both release the GIL, so they run in threads beside the
reactor. Either may be missing; L{available} says what is here.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from imgrelay.core.errors import ProtocolError
from imgrelay.wire.pb import link_pb2

RAW: int = link_pb2.RAW
ZSTD: int = link_pb2.ZSTD
LZ4: int = link_pb2.LZ4

#: Each encoding's name, as C{--compress} and the logs spell it.
NAMES: dict[int, str] = {RAW: "none", ZSTD: "zstd", LZ4: "lz4"}

#: The Zstandard level: the fastest of the normal levels; at 1 MiB chunks of
#: a Python heap it shrank 7x at about 650 MB/s on one core here.
ZSTD_LEVEL = 1

try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover - the package is a dependency
    _zstd = None  # type: ignore[assignment]

try:
    import lz4.block as _lz4
except ImportError:  # pragma: no cover - the package is a dependency
    _lz4 = None


class BadChunk(ProtocolError):
    """
    An encoded chunk does not decode to the size its header announced.
    """


def available() -> tuple[int, ...]:
    """
    @return: The encodings besides C{RAW} this process can encode and
        decode, in order of preference.
    """
    return tuple(e for e, module in ((ZSTD, _zstd), (LZ4, _lz4)) if module is not None)


_local = threading.local()


def _compressor() -> Any:
    # A Zstandard context is not to be shared between threads: one each.
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = _zstd.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return compressor


def _decompressor() -> Any:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = _zstd.ZstdDecompressor()
    return decompressor


def encode(encoding: int, data: bytes | memoryview) -> bytes:
    """
    Encode one chunk. Safe to call from any thread.

    @param encoding: C{ZSTD} or C{LZ4}, one of L{available}.
    @return: The payload.
    """
    if encoding == ZSTD:
        return bytes(_compressor().compress(data))
    if encoding == LZ4:
        return bytes(_lz4.compress(data, mode="default", store_size=False))
    raise ValueError(f"cannot encode with {NAMES.get(encoding, encoding)}")


def decode(encoding: int, payload: bytes | bytearray | memoryview, size: int) -> bytes:
    """
    Decode one chunk into exactly C{size} bytes. Safe to call from any
    thread.

    @param encoding: The chunk's encoding, one of L{available}.
    @param size: What its header said it decodes to.
    @raise BadChunk: If the payload is corrupt, or decodes (or says it
        decodes) to anything but C{size} bytes, or carries more than one
        frame; it never decodes more than C{size} bytes.
    """
    name = NAMES.get(encoding, str(encoding))
    try:
        if encoding == ZSTD:
            out = _decodeZstd(payload, size)
        elif encoding == LZ4:
            out = _lz4.decompress(payload, uncompressed_size=size)
        else:
            raise BadChunk(f"chunk encoded with unknown encoding {name}")
    except BadChunk:
        raise
    except Exception as e:
        raise BadChunk(f"{name} chunk of {len(payload)} bytes is corrupt: {e}") from None
    if len(out) != size:
        raise BadChunk(f"{name} chunk decodes to {len(out)} bytes, its header said {size}")
    return out


def _decodeZstd(payload: bytes | bytearray | memoryview, size: int) -> bytes:
    announced = _zstd.frame_content_size(payload)
    if announced != size:
        # A frame that does not state its size could decode to anything:
        # the decoder would have to be trusted to stop.
        said = "no size" if announced == -1 else f"{announced} bytes"
        raise BadChunk(f"zstd chunk's frame says {said}, its header said {size}")
    # One call into a buffer of the announced size, with this thread's
    # context: a streaming decoder made afresh for each chunk allocated its
    # window and output anew: 256 MiB of heap pages cost the cache a quarter
    # of a CPU-second more. Bytes after the frame, or a frame cut short, fail.
    out: bytes = _decompressor().decompress(payload, max_output_size=size, allow_extra_data=False)
    return out


def parse(name: str) -> Optional[int]:
    """
    @return: The encoding C{--compress NAME} names (None for C{auto}).
    @raise ValueError: For any other name.
    """
    if name == "auto":
        return None
    for encoding, known in NAMES.items():
        if known == name:
            return encoding
    raise ValueError(f"unknown compression {name!r}")
