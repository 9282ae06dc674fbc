"""
Tests for L{imgrelay.cli.progress}: plain progress lines, a tqdm bar on a
terminal, and byte counts for people.
"""

from __future__ import annotations

import io
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from imgrelay.cli.progress import Progress, humanBytes


class HumanBytesTests(SynchronousTestCase):
    """
    L{humanBytes} picks binary units.
    """

    def test_units(self) -> None:
        """
        Bytes stay whole; larger sizes get one decimal in KiB, MiB, ...
        """
        self.assertEqual(
            [humanBytes(n) for n in (0, 1023, 1024, 1536, 100 << 20, 5 << 40, 3 << 60)],
            ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "100.0 MiB", "5.0 TiB", "3072.0 PiB"],
        )


class ProgressTests(SynchronousTestCase):
    """
    L{Progress} writes a few plain lines when not on a terminal.
    """

    def test_plainLines(self) -> None:
        """
        Without a terminal: the total, then a line each time another tenth
        is done, however small the updates.
        """
        out = io.StringIO()
        progress = Progress(out, "fetch")
        progress.start(1000, "session s, 3 images")
        for _ in range(100):
            progress.update(10)
        progress.note("done")
        progress.close()
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0], "fetch: session s, 3 images: 1000 B")
        self.assertEqual(lines[1:-1], [f"fetch: {p}% ({p * 10} B of 1000 B)" for p in range(10, 101, 10)])
        self.assertEqual(lines[-1], "fetch: done")

    def test_bigSteps(self) -> None:
        """
        An update that crosses several tenths gives one line.
        """
        out = io.StringIO()
        progress = Progress(out, "send", bar=False)
        progress.start(100, "x")
        progress.update(75)
        progress.update(25)
        self.assertEqual(out.getvalue().splitlines()[1:], ["send: 75% (75 B of 100 B)", "send: 100% (100 B of 100 B)"])

    def test_nothingToDo(self) -> None:
        """
        A total of zero bytes prints its line and no percentages.
        """
        out = io.StringIO()
        progress = Progress(out, "send", bar=False)
        progress.start(0, "x")
        progress.update(0)
        self.assertEqual(out.getvalue(), "send: x: 0 B\n")

    def test_bar(self) -> None:
        """
        On a terminal a tqdm bar is drawn on the stream, with notes above
        it, and finished by L{Progress.close}.
        """
        out = io.StringIO()
        progress = Progress(out, "fetch", bar=True)
        progress.start(2048, "x")
        progress.update(2048)
        progress.note("hello")
        progress.close()
        text = out.getvalue()
        self.assertIn("fetch: hello", text)
        self.assertIn("100%", text)
        self.assertIn("2.00k/2.00k", text)


class LazyImportTests(SynchronousTestCase):
    """
    tqdm is loaded only when a bar is drawn.
    """

    def test_daemonsDoNotLoadTqdm(self) -> None:
        """
        Importing the package, the twistd plugins' module and the command
        itself loads no tqdm: a daemon does not pay for it.
        """
        code = (
            "import sys, imgrelay, imgrelay.tap, imgrelay.cli.main, imgrelay.cli.progress, imgrelay.cli.fetch, "
            "imgrelay.cli.send, imgrelay.cli.status; print('tqdm' in sys.modules)"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout), (0, "False\n"), result.stderr)
