"""Training budgets: optimizer steps, wall-clock time, tokens; how much of the budget a run has used.

`train.max_steps`, `train.max_time` ("90m", "2h", "1d", "3600s" or a number of seconds) and
`train.max_tokens` (real, non-pad tokens over all processes) are limits; a run stops after the step at which
the first of them is reached, then saves and exports as at any end. Time is the run's wall clock from its
first step, evaluations and checkpoints included, summed over resumes (a resumed run continues the same
budget; the start-up of each launch is not counted).

With a time or token budget, the learning-rate schedule runs on the fraction of the budget used
(`Budget.progress`), as cramming does (Geiping & Goldstein, 2022): warmup and decay end when the budget
does, whatever the throughput turns out to be (bert.optim.progress_multiplier). With steps alone it is the
plain step schedule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float | int) -> float:
    """'90m' -> 5400.0; '1.5h', '2d', '3600s', 3600 -> seconds. ValueError for anything else or <= 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if match is None:
            raise ValueError(f"train.max_time must be like 90m, 2h, 1d or 3600s, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"train.max_time must be > 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Budget:
    """The limits of a run (None: no such limit)."""

    max_steps: int | None = None
    max_seconds: float | None = None
    max_tokens: int | None = None

    @property
    def by_fraction(self) -> bool:
        """Whether the lr schedule runs on the fraction of the budget (a time or token limit is set)."""
        return self.max_seconds is not None or self.max_tokens is not None

    def progress(self, steps: int, seconds: float, tokens: int) -> float:
        """The fraction of the budget used: the largest over the limits, in [0, 1]."""
        used = [0.0]
        if self.max_steps:
            used.append(steps / self.max_steps)
        if self.max_seconds:
            used.append(seconds / self.max_seconds)
        if self.max_tokens:
            used.append(tokens / self.max_tokens)
        return min(max(used), 1.0)

    def spent(self, steps: int, seconds: float, tokens: int) -> bool:
        return self.progress(steps, seconds, tokens) >= 1.0

    def left(self, seconds: float, tokens: int) -> dict[str, float]:
        """What is left of the time and token limits (for the dashboard)."""
        out = {}
        if self.max_seconds:
            out["budget_left_s"] = max(self.max_seconds - seconds, 0.0)
        if self.max_tokens:
            out["budget_left_tokens"] = float(max(self.max_tokens - tokens, 0))
        return out
