"""
Tests for L{imgrelay.core.names}: checks on image names, snapshot ids and
session names that come from peers.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.core.names import MAX_ID, MAX_NAME, BadName, checkId, checkImageName, checkSessionDirName


class CheckImageNameTests(SynchronousTestCase):
    """
    L{checkImageName} accepts file names and refuses anything that could
    escape the images directory or is not a Linux file name.
    """

    def assertRefused(self, name: str, *words: str) -> None:
        """
        Assert C{name} is refused with L{BadName} whose message holds each of
        C{words}.
        """
        with self.assertRaises(BadName) as raised:
            checkImageName(name)
        for word in words:
            self.assertIn(word, str(raised.exception))

    def test_badNameIsValueError(self) -> None:
        """
        L{BadName} is a L{ValueError}.
        """
        self.assertTrue(issubclass(BadName, ValueError))

    def test_criuNames(self) -> None:
        """
        The names CRIU uses for its image files are accepted and returned
        unchanged.
        """
        for name in [
            "pages-1.img",
            "core-11105.img",
            "inventory.img",
            "pagemap-11108.img",
            "fdinfo-2.img",
            "timens-0.img",
            "parent",
            ".hidden",
            "a..b",
            "...",
        ]:
            self.assertIs(checkImageName(name), name)

    def test_empty(self) -> None:
        """
        The empty name is refused as empty.
        """
        self.assertRefused("", "empty")

    def test_dots(self) -> None:
        """
        C{.} and C{..} are refused: they are directories, not file names.
        """
        self.assertRefused(".", "'.'", "not a file name")
        self.assertRefused("..", "'..'", "not a file name")

    def test_slash(self) -> None:
        """
        Any name holding a C{/} is refused: a path, absolute or relative.
        """
        for name in ["/", "a/b", "/etc/passwd", "../x", "x/", "pages-1.img/"]:
            self.assertRefused(name, "'/'")

    def test_nul(self) -> None:
        """
        A name holding a NUL is refused.
        """
        for name in ["\0", "a\0b", "pages-1.img\0"]:
            self.assertRefused(name, "NUL")

    def test_maxLength(self) -> None:
        """
        A name of exactly 255 bytes is accepted; 256 is refused as too long.
        """
        self.assertEqual(MAX_NAME, 255)
        self.assertEqual(checkImageName("a" * 255), "a" * 255)
        self.assertRefused("a" * 256, "over 255 bytes")

    def test_lengthInBytes(self) -> None:
        """
        Length counts UTF-8 bytes, not characters: 128 two-byte characters
        (256 bytes) are refused, 127 of them and one ASCII letter (255 bytes)
        are not; 64 four-byte characters (256 bytes) are refused.
        """
        self.assertRefused("\u00e9" * 128, "over 255 bytes")
        name = "\u00e9" * 127 + "a"
        self.assertEqual(checkImageName(name), name)
        self.assertRefused("\U0001f600" * 64, "over 255 bytes")
        self.assertEqual(checkImageName("\U0001f600" * 63 + "abc"), "\U0001f600" * 63 + "abc")

    def test_maxLengthParameter(self) -> None:
        """
        C{maxLength} sets the limit.
        """
        self.assertEqual(checkImageName("abc", maxLength=3), "abc")
        with self.assertRaises(BadName):
            checkImageName("abcd", maxLength=3)


class CheckIdTests(SynchronousTestCase):
    """
    L{checkId} refuses snapshot ids and session names with a NUL or too long.
    """

    def test_accepted(self) -> None:
        """
        Ordinary values, including the empty one and paths, are accepted and
        returned unchanged.
        """
        for value in ["", "/mig/d1", "session-1", "a/../b", "\u00e9t\u00e9"]:
            self.assertIs(checkId("snapshot id", value), value)

    def test_nul(self) -> None:
        """
        A NUL is refused with a message naming the kind of value.
        """
        with self.assertRaises(BadName) as raised:
            checkId("snapshot id", "/mig\0/d1")
        self.assertIn("snapshot id", str(raised.exception))
        self.assertIn("NUL", str(raised.exception))

    def test_maxLength(self) -> None:
        """
        4096 bytes are accepted; 4097 are refused with a message naming the
        kind and the limit.
        """
        self.assertEqual(MAX_ID, 4096)
        self.assertEqual(checkId("session", "s" * 4096), "s" * 4096)
        with self.assertRaises(BadName) as raised:
            checkId("session", "s" * 4097)
        self.assertIn("session", str(raised.exception))
        self.assertIn("4096", str(raised.exception))

    def test_lengthInBytes(self) -> None:
        """
        Length counts UTF-8 bytes: 2049 two-byte characters are refused.
        """
        with self.assertRaises(BadName):
            checkId("session", "\u00e9" * 2049)
        self.assertEqual(checkId("session", "\u00e9" * 2048), "\u00e9" * 2048)

    def test_maxLengthParameter(self) -> None:
        """
        C{maxLength} sets the limit.
        """
        self.assertEqual(checkId("session", "ab", maxLength=2), "ab")
        with self.assertRaises(BadName):
            checkId("session", "abc", maxLength=2)


class CheckSessionDirNameTests(SynchronousTestCase):
    """
    L{checkSessionDirName} accepts names that are a directory of their own
    under the sessions root, and refuses anything else.
    """

    def assertRefused(self, name: str, *words: str) -> None:
        """
        Assert C{name} is refused with L{BadName} whose message holds each of
        C{words}.
        """
        with self.assertRaises(BadName) as raised:
            checkSessionDirName(name)
        for word in words:
            self.assertIn(word, str(raised.exception))

    def test_accepted(self) -> None:
        """
        Host-and-directory names, with dots, colons and non-ASCII letters
        inside, are returned unchanged.
        """
        for name in ["web-1", "host-a-dump-1f3e9c2a", "db.example:5432", "a..b", "été", "x" * MAX_NAME]:
            self.assertEqual(checkSessionDirName(name), name)

    def test_empty(self) -> None:
        """
        The empty name is refused.
        """
        self.assertRefused("", "empty")

    def test_leadingDot(self) -> None:
        """
        C{.}, C{..} and hidden names are refused.
        """
        for name in (".", "..", ".hidden", "..x"):
            self.assertRefused(name, repr(name), "'.'")

    def test_slash(self) -> None:
        """
        A C{/} anywhere is refused: the name would leave the sessions root
        or name a nested directory.
        """
        for name in ("a/b", "/etc", "x/", "../../etc"):
            self.assertRaises(BadName, checkSessionDirName, name)
        self.assertRefused("a/b", "'/'")

    def test_nul(self) -> None:
        """
        A NUL is refused.
        """
        self.assertRefused("a\0b", "NUL")

    def test_lengthInBytes(self) -> None:
        """
        The limit counts UTF-8 bytes: 128 two-byte letters are too long.
        """
        self.assertRefused("x" * (MAX_NAME + 1), "over 255 bytes")
        self.assertRefused("é" * 128, "over 255 bytes")
        self.assertEqual(checkSessionDirName("é" * 127), "é" * 127)
