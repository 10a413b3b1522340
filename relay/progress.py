"""Progress for long CLI work (`relay loadgen`, `relay verify`, …), written to stderr.

On a terminal one line is redrawn in place (`\\r`); in logs and CI (not a TTY) a plain line
is written every `interval` seconds instead, so output stays readable and small.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

# How often the in-place line is redrawn: often enough to look live, rarely enough to cost nothing.
TTY_REFRESH_SECONDS = 0.2


def _stderr() -> TextIO:
    return sys.stderr


def format_duration(seconds: float) -> str:
    """`4.2s`, `3m05s`, `2h07m`: short enough for one status line."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:,.1f}"


@dataclass
class Progress:
    """Counts units of work done out of `total` (None when unknown) and reports them on `stream`."""

    total: int | None
    label: str = ""
    unit: str = "events"
    stream: TextIO = field(default_factory=_stderr)
    interval: float = 2.0
    tty: bool | None = None  # None: ask the stream
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    _started: float = field(init=False, default=0.0)
    _last_shown: float = field(init=False, default=0.0)
    _drawn: int = field(init=False, default=0)  # width of the in-place line, to blank leftovers
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.tty is None:
            isatty = getattr(self.stream, "isatty", None)
            self.tty = bool(isatty and isatty())
        self._started = self._last_shown = self.clock()

    # ------------------------------------------------------------------ numbers
    @property
    def elapsed(self) -> float:
        return max(self.clock() - self._started, 0.0)

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the average rate so far; None when unknown."""
        rate = self.rate
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def line(self) -> str:
        head = f"{self.label}: " if self.label else ""
        if self.total is None:
            count = f"{self.done:,} {self.unit}"
        else:
            pct = 100.0 * self.done / self.total if self.total else 100.0
            count = f"{self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%)"
        eta = self.eta
        tail = f", ETA {format_duration(eta)}" if eta is not None and self.done < (self.total or 0) else ""
        return f"{head}{count}, {format_rate(self.rate)}/s, {format_duration(self.elapsed)}{tail}"

    # ------------------------------------------------------------------ reporting
    def update(self, n: int = 1) -> None:
        """Record `n` more units done and redraw if it is time to."""
        self.done += n
        now = self.clock()
        wait = TTY_REFRESH_SECONDS if self.tty else self.interval
        if now - self._last_shown >= wait:
            self._last_shown = now
            self._show(self.line())

    def close(self, summary: str | None = None) -> str:
        """Print the final line (`summary`, or the counters) once; returns it."""
        text = summary if summary is not None else self.line()
        if not self._closed:
            self._closed = True
            self._show(text, final=True)
        return text

    def _show(self, text: str, final: bool = False) -> None:
        if self.tty:
            pad = " " * max(self._drawn - len(text), 0)
            self.stream.write("\r" + text + pad + ("\n" if final else ""))
            self._drawn = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
