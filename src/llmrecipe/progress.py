"""Progress that reads well in a terminal and in a log file.

On a terminal: a tqdm bar. Redirected to a file or a pipe: a plain line every `LLMRECIPE_PROGRESS_SECONDS`
(30) seconds and one at the end — never the carriage-return redraws that make a log one 50,000-character
line. `--quiet` (or TQDM_DISABLE=1, tqdm's own switch) turns progress off; results and errors still print.
"""
from __future__ import annotations

import os
import sys
import time

QUIET = False  # set by the command line's --quiet


def _off() -> bool:
    return QUIET or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def progress(total: int | None = None, initial: int = 0, desc: str = "", unit: str = "it",
             disable: bool = False):
    """A tqdm bar on a terminal, else `PlainProgress` (silent when progress is off or `disable`)."""
    if not disable and not _off() and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    return PlainProgress(total, initial, desc, unit, silent=disable or _off())


class PlainProgress:
    """tqdm's interface (update, set_postfix, write, close, a context manager), as plain lines on stderr."""

    def __init__(self, total: int | None, initial: int, desc: str, unit: str, silent: bool):
        self.total, self.n, self.desc, self.unit, self.silent = total, initial, desc, unit, silent
        self.interval = float(os.environ.get("LLMRECIPE_PROGRESS_SECONDS", 30))
        self.t0 = self.last = time.time()
        self.start, self.postfix, self.closed = initial, "", False

    def _line(self) -> str:
        rate = (self.n - self.start) / max(time.time() - self.t0, 1e-9)
        done = f"{self.n:,}/{self.total:,} {self.unit}" if self.total else f"{self.n:,} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        line = f"{self.desc}: {done}{pct}, {rate:,.1f} {self.unit}/s, {time.time() - self.t0:,.0f} s"
        return (line + (f", {self.postfix}" if self.postfix else ""))[:200]

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.silent and time.time() - self.last >= self.interval:
            print(self._line(), file=sys.stderr, flush=True)
            self.last = time.time()

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def write(self, text: str) -> None:
        print(text, flush=True)  # what tqdm.write does: a message line, on stdout

    def close(self) -> None:
        if not self.closed and not self.silent and self.n > self.start:
            print(self._line(), file=sys.stderr, flush=True)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
