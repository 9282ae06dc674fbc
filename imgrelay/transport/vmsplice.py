# -*- test-case-name: tests.transport.test_pipes -*-
"""
C{vmsplice(2)}: hand a pipe the pages of an image held in memory instead of
copying them into it. The pipe then refers to those pages until the reader
has read them, so the memory must not change meanwhile: it is only used for
verified images, which never change, and only for memory mapped on its own
(C{mmap}): the kernel keeps such pages alive for the pipe even if the image
is dropped and unmapped before the reader is done, and nothing else of this
process can ever be put in them. Heap memory (a C{bytearray}) is never
spliced: once freed, the allocator would hand the same pages to other
objects while the pipe still shows them to the reader.

Python's C{os} module has C{splice} but not C{vmsplice}; it is called
through C{ctypes}, and where it cannot be (another C library, a read-only
buffer), L{vmsplice} answers None and the caller writes as usual.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Any, Optional

#: Do not block on a full pipe (the pipe is non-blocking anyway).
_SPLICE_F_NONBLOCK = 2


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _load() -> Optional[Any]:
    try:
        function = ctypes.CDLL(None, use_errno=True).vmsplice
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_size_t, ctypes.c_uint]
    function.restype = ctypes.c_ssize_t
    return function


_vmsplice = _load()


def vmsplice(fd: int, view: memoryview) -> Optional[int]:
    """
    Put the memory of C{view} into the pipe C{fd} without copying it.

    @param fd: A non-blocking pipe's write end.
    @param view: A contiguous, writable view of an C{mmap.mmap} that will
        not change until the reader has read it.
    @return: How many bytes the pipe took, or None if this view cannot be
        spliced (write it instead).
    @raise BlockingIOError: If the pipe is full.
    @raise OSError: If the pipe is broken or the call fails.
    """
    if (
        _vmsplice is None or not isinstance(view.obj, mmap.mmap) or view.readonly
        or not view.contiguous or not len(view)
    ):
        return None
    buffer = (ctypes.c_char * len(view)).from_buffer(view)
    try:
        iov = _IOVec(ctypes.addressof(buffer), len(view))
        n = _vmsplice(fd, ctypes.byref(iov), 1, _SPLICE_F_NONBLOCK)
    finally:
        # Release the export at once, so that the image may be dropped.
        del buffer
    if n < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return int(n)
