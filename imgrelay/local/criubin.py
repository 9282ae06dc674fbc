# -*- test-case-name: tests.local.test_criubin -*-
"""
Where the CRIU binary is: C{IMGRELAY_CRIU} if set, else C{criu} on C{PATH}.
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping, Optional

#: The environment variable naming the CRIU binary to run.
ENVIRONMENT = "IMGRELAY_CRIU"


class CriuNotFound(Exception):
    """
    No CRIU binary to run; the message says where it was looked for.
    """


def findCriu(environ: Optional[Mapping[str, str]] = None) -> str:
    """
    Find the CRIU binary.

    @param environ: The environment to read (default: the process's).
    @return: The path of an executable CRIU.
    @raise CriuNotFound: If C{IMGRELAY_CRIU} names no executable file, or
        it is unset and C{PATH} has no C{criu}.
    """
    if environ is None:
        environ = os.environ
    named = environ.get(ENVIRONMENT)
    if named:
        if os.path.isfile(named) and os.access(named, os.X_OK):
            return os.path.abspath(named)
        raise CriuNotFound(f"{ENVIRONMENT}={named!r} is not an executable file")
    found = shutil.which("criu", path=environ.get("PATH", os.defpath))
    if found is None:
        raise CriuNotFound(f"no criu on PATH, and {ENVIRONMENT} is not set")
    return found
