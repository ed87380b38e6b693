"""Progress output (bert/progress.py): plain lines at an interval when the output is not a terminal."""

from __future__ import annotations

import io
import re

import bert.progress as progress_module
from bert.progress import Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_file_gets_one_plain_line_per_interval_not_a_redraw_per_step(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    stream = io.StringIO()  # not a terminal
    progress = Progress(1000, desc="pretrain", interval=30.0, stream=stream)
    assert not progress.live
    for step in range(1000):
        clock.now = step * 0.1  # 10 steps a second: 100 s in all
        progress.update(1, loss=3.0 - step / 1000)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # at 30, 60 and 90 s, and the closing line
    # each line starts with the wall-clock time: a cluster log is read later
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert re.match(
        stamp + re.escape("pretrain: step 301/1000 (30%), 10 steps/s, 1m09s left; loss=2.7"), lines[0]
    )
    assert re.match(stamp + re.escape("pretrain: step 1000/1000 (100%)"), lines[-1])
    assert "\r" not in stream.getvalue()


def test_a_disabled_progress_writes_nothing_but_messages(capsys):
    stream = io.StringIO()
    progress = Progress(10, enabled=False, stream=stream)
    progress.update(10)
    progress.write("step 10 eval: loss=1")
    progress.close()
    assert stream.getvalue() == "" and capsys.readouterr().out == "step 10 eval: loss=1\n"
