"""Progress output that fits where it goes: a live bar on a terminal, plain lines in a log.

On a terminal, `Progress` is a tqdm bar. When the output is not a terminal (a SLURM log, CI, `> log`), a bar
would write every redraw into the file; there it writes one plain line every `interval` seconds instead
(and one at the end), with the step, the rate, the time left and the latest figures:

    pretrain: step 300/1500 (20%), 4.1 steps/s, 4m52s left; loss=3.412 tok_s=2210
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
    """Steps done out of `total`, shown as the output allows (module docstring); silent when not `enabled`."""

    def __init__(
        self,
        total: int | None,
        initial: int = 0,
        desc: str = "",
        enabled: bool = True,
        interval: float = 30.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.n, self.desc = total, initial, desc
        self.enabled, self.interval = enabled, interval
        self.stream = stream or sys.stderr
        self.postfix: dict[str, str] = {}
        self.start, self.start_n = time.monotonic(), initial
        self.last_line = self.start
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=self.stream)

    @property
    def live(self) -> bool:
        """Whether a live bar is drawn (else plain lines)."""
        return self.bar is not None

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix = {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in postfix.items()}
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
        elif time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        now = time.monotonic()
        self.last_line = now
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        figures = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        if self.total:  # a step budget
            left = (self.total - self.n) / rate if rate > 0 else 0.0
            share = f"/{self.total} ({self.n / self.total:.0%})"
            text = f"{self.desc}: step {self.n}{share}, {rate:.3g} steps/s, {_duration(left)} left"
        else:  # a time or token budget: the postfix says how much of it is used
            text = f"{self.desc}: step {self.n}, {rate:.3g} steps/s"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")  # a log file is read later: when was this line written
        print(f"{stamp} {text}" + (f"; {figures}" if figures else ""), file=self.stream, flush=True)

    def write(self, line: str) -> None:
        """A message line that does not break the bar (shown even when the bar is disabled)."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n > self.start_n:
            self._line()
        self.enabled = False
