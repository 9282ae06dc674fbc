"""
Tests for L{imgrelay.cli.imagefiles}: where fetched images are written, and
that nothing is written outside the directory or over a file.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cli.imagefiles import FetchError, ImageFiles, safeSnapshotDir


class SafeSnapshotDirTests(SynchronousTestCase):
    """
    L{safeSnapshotDir} turns any snapshot id into one file name.
    """

    def test_examples(self) -> None:
        """
        Letters, digits and C{_.-~} stay; everything else, C{/} and C{%}
        among them, is percent-encoded from UTF-8; C{.} and C{..} are
        encoded whole.
        """
        self.assertEqual(safeSnapshotDir("1"), "1")
        self.assertEqual(safeSnapshotDir("/run/mig/1"), "%2Frun%2Fmig%2F1")
        self.assertEqual(safeSnapshotDir("../x"), "..%2Fx")
        self.assertEqual(safeSnapshotDir("a%2Fb"), "a%252Fb")
        self.assertEqual(safeSnapshotDir("é"), "%C3%A9")
        self.assertEqual(safeSnapshotDir("."), "%2E")
        self.assertEqual(safeSnapshotDir(".."), "%2E%2E")

    def test_alwaysOneName(self) -> None:
        """
        The result is never empty, C{.} or C{..}, holds no C{/} or NUL,
        and fits a file name, even for a 4096-byte id; different ids give
        different names.
        """
        ids = ["x", ".", "..", "/", "//", "a/b", "a%2Fb", "\x01", "/" * 4096, "/" * 4095 + "a", "a" * 300, "a" * 301]
        names = [safeSnapshotDir(i) for i in ids]
        for name in names:
            self.assertNotIn(name, ("", ".", ".."))
            self.assertNotIn("/", name)
            self.assertNotIn("\0", name)
            self.assertLessEqual(len(name.encode()), 255)
        self.assertEqual(len(set(names)), len(ids))


class ImageFilesTests(SynchronousTestCase):
    """
    L{ImageFiles} creates each image file inside its directory only.
    """

    def setUp(self) -> None:
        self.dir = os.path.join(self.mktemp(), "out")
        os.makedirs(os.path.dirname(self.dir))
        self.files = ImageFiles(self.dir)
        self.addCleanup(self.files.close)

    def test_layout(self) -> None:
        """
        Snapshot C{""} goes to C{DIR/NAME}, another to C{DIR/SAFE/NAME};
        the directory is created with mode 0700, files with 0600.
        """
        self.files.create("", "a.img")
        self.files.write(b"abc")
        self.files.finish()
        self.files.create("/mig/1", "a.img")
        self.files.write(memoryview(b"xyz"))
        self.files.finish()
        with open(os.path.join(self.dir, "a.img"), "rb") as f:
            self.assertEqual(f.read(), b"abc")
        with open(os.path.join(self.dir, "%2Fmig%2F1", "a.img"), "rb") as f:
            self.assertEqual(f.read(), b"xyz")
        self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(os.path.join(self.dir, "a.img")).st_mode & 0o777, 0o600)

    def test_noOverwrite(self) -> None:
        """
        An existing file is never overwritten, and never removed.
        """
        with open(os.path.join(self.dir, "a.img"), "wb") as f:
            f.write(b"mine")
        error = self.assertRaises(FetchError, self.files.create, "", "a.img")
        self.assertIn("already exists", str(error))
        self.assertIsNone(self.files.discard())
        with open(os.path.join(self.dir, "a.img"), "rb") as f:
            self.assertEqual(f.read(), b"mine")

    def test_symlinkedFile(self) -> None:
        """
        A symbolic link planted under an image's name is not followed,
        dangling or not: nothing is written where it points.
        """
        target = os.path.join(os.path.dirname(self.dir), "target")
        os.symlink(target, os.path.join(self.dir, "a.img"))
        self.assertRaises(FetchError, self.files.create, "", "a.img")
        self.assertFalse(os.path.exists(target))
        with open(target, "wb") as f:
            f.write(b"theirs")
        self.assertRaises(FetchError, self.files.create, "", "a.img")
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"theirs")

    def test_symlinkedSnapshotDir(self) -> None:
        """
        A symbolic link planted under a snapshot's directory name is
        refused, naming it.
        """
        elsewhere = os.path.join(os.path.dirname(self.dir), "elsewhere")
        os.mkdir(elsewhere)
        os.symlink(elsewhere, os.path.join(self.dir, "snap"))
        error = self.assertRaises(FetchError, self.files.create, "snap", "a.img")
        self.assertIn("symbolic link", str(error))
        self.assertEqual(os.listdir(elsewhere), [])

    def test_discard(self) -> None:
        """
        L{ImageFiles.discard} removes the file being written and says which.
        """
        self.files.create("s", "a.img")
        self.files.write(b"part")
        shown = self.files.discard()
        self.assertEqual(shown, os.path.join(self.dir, "s", "a.img"))
        self.assertEqual(os.listdir(os.path.join(self.dir, "s")), [])

    def test_existingDirectory(self) -> None:
        """
        An existing directory is used; one that cannot be made is refused.
        """
        ImageFiles(self.dir).close()
        error = self.assertRaises(FetchError, ImageFiles, os.path.join(self.dir, "no", "such"))
        self.assertIn("cannot create", str(error))
