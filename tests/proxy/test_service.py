"""
Tests for L{imgrelay.proxy.service}: the proxy's default session name.
"""

from __future__ import annotations

import hashlib
import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.core.names import checkSessionDirName
from imgrelay.core.names import defaultSessionName


class DefaultSessionNameTests(SynchronousTestCase):
    """
    L{defaultSessionName} is C{HOST-DIRNAME-HASH}, a safe directory name on
    the cache, distinct per host and images directory.
    """

    def test_shape(self) -> None:
        """
        The host, the directory's last component and the first 8 hex digits
        of the SHA-256 of its absolute path.
        """
        digest = hashlib.sha256(b"/run/dump").hexdigest()[:8]
        self.assertEqual(defaultSessionName("/run/dump", "host-a"), f"host-a-dump-{digest}")

    def test_thisHost(self) -> None:
        """
        By default the host is this one's, and a relative directory is made
        absolute first.
        """
        here = os.path.abspath("d")
        self.assertEqual(defaultSessionName("d"), defaultSessionName(here, socket.gethostname()))

    def test_distinct(self) -> None:
        """
        Directories with the same last component, or two hosts, give
        different names.
        """
        self.assertNotEqual(defaultSessionName("/a/dump", "h"), defaultSessionName("/b/dump", "h"))
        self.assertNotEqual(defaultSessionName("/a/dump", "h1"), defaultSessionName("/a/dump", "h2"))

    def test_safe(self) -> None:
        """
        Awkward hosts and directories (the root, spaces, a leading dot,
        very long names) still give a name the cache accepts as a directory.
        """
        for host, path in [
            ("h", "/"),
            (".hidden-host", "/run/.dump"),
            ("h", "/run/dump dir/with:odd*chars"),
            ("x" * 300, "/" + "y" * 250),
            ("h\u00e9", "/run/d\u00e9p\u00f4t"),
        ]:
            name = defaultSessionName(path, host)
            self.assertEqual(checkSessionDirName(name), name)
            self.assertRegex(name, r"^[A-Za-z0-9_][A-Za-z0-9._-]*-[0-9a-f]{8}$")
        self.assertTrue(defaultSessionName("/", "h").startswith("h-root-"))
