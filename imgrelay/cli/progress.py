# -*- test-case-name: tests.cli.test_progress -*-
"""
Progress of an C{imgrelay} command on stderr: a tqdm bar when stderr is a
terminal, else a plain line at each tenth of the way (logs and pipes get a
few lines, not a bar redrawn thousands of times).
"""

from __future__ import annotations

from typing import Any, Optional, TextIO

_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]


def humanBytes(n: float) -> str:
    """
    @return: C{n} bytes for people: C{"512 B"}, C{"1.5 MiB"}.
    """
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """
    Bytes done out of a known total.

    @ivar done: Bytes done so far.
    """

    #: How many plain lines a whole run prints at most (one per tenth).
    STEPS = 10

    def __init__(self, stream: TextIO, label: str, bar: Optional[bool] = None) -> None:
        """
        @param stream: Where progress goes (stderr).
        @param label: What is going on, e.g. C{"fetch"}.
        @param bar: Whether to draw a tqdm bar; by default when C{stream}
            is a terminal.
        """
        self._stream = stream
        self._label = label
        self._bar = stream.isatty() if bar is None else bar
        self._tqdm: Any = None
        self.total = 0
        self.done = 0
        self._step = 0

    def start(self, total: int, what: str) -> None:
        """
        The work is known: C{total} bytes, described by C{what}.
        """
        self.total = total
        if self._bar:
            from tqdm import tqdm  # a command-line nicety: not loaded by the daemons

            self._tqdm = tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, file=self._stream,
                desc=self._label, leave=True,
            )
        else:
            self._print(f"{what}: {humanBytes(total)}")

    def update(self, n: int) -> None:
        """
        C{n} more bytes are done.
        """
        self.done += n
        if self._tqdm is not None:
            self._tqdm.update(n)
            return
        if self.total <= 0:
            return
        step = min(self.done * self.STEPS // self.total, self.STEPS)
        if step > self._step:
            self._step = step
            self._print(f"{self.done * 100 // self.total}% ({humanBytes(self.done)} of {humanBytes(self.total)})")

    def note(self, line: str) -> None:
        """
        Say something without breaking the bar.
        """
        if self._tqdm is not None:
            self._tqdm.write(f"{self._label}: {line}", file=self._stream)
        else:
            self._print(line)

    def close(self) -> None:
        """
        The work is over (done or failed).
        """
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def _print(self, line: str) -> None:
        self._stream.write(f"{self._label}: {line}\n")
        self._stream.flush()
