"""Budget-bounded pretraining (bert/budget.py): time and token limits, the schedule over the budget, and a
resumed budget run that ends where an uninterrupted one does."""

from __future__ import annotations

import pytest

from bert import checkpoint as ckpt
from bert.budget import Budget, parse_duration
from bert.config import ConfigError, OptimizerConfig, PretrainConfig, load_config
from bert.optim import progress_multiplier
from tests.faults import StepClock
from tests.pretrain_utils import metrics, pretrain_here


def test_durations():
    assert parse_duration("90m") == 5400 and parse_duration("1.5h") == 5400 and parse_duration("2d") == 172800
    assert parse_duration("3600s") == parse_duration("3600") == parse_duration(3600) == 3600
    for bad in ("2 hours", "-1m", "0"):
        with pytest.raises(ValueError, match="train.max_time"):
            parse_duration(bad)
    with pytest.raises(ConfigError, match="train.max_time must be like 90m"):
        load_config(PretrainConfig, None, ["train.max_time=soon"])
    with pytest.raises(ConfigError, match="train.max_steps must be set when neither"):
        load_config(PretrainConfig, None, ["train.max_steps=null"])


def test_progress_is_the_largest_share_of_any_limit():
    budget = Budget(max_steps=100, max_seconds=60.0, max_tokens=1000)
    assert budget.progress(10, 30.0, 100) == 0.5  # time is the limit that binds
    assert budget.progress(100, 1.0, 1) == 1.0 and budget.spent(100, 1.0, 1)
    assert budget.progress(5, 80.0, 0) == 1.0  # capped
    assert budget.left(45.0, 400) == {"budget_left_s": 15.0, "budget_left_tokens": 600.0}
    assert not Budget(max_steps=10).by_fraction and Budget(max_tokens=5).by_fraction


def test_the_schedule_over_a_budget_warms_up_and_decays_with_it():
    cfg = OptimizerConfig(warmup_steps=0, warmup_ratio=0.1, schedule="linear", min_lr_ratio=0.0)
    assert progress_multiplier(0, 0.05, cfg) == pytest.approx(0.5)  # half-way through the warmup
    assert progress_multiplier(0, 0.1, cfg) == pytest.approx(1.0)
    assert progress_multiplier(0, 0.55, cfg) == pytest.approx(0.5)  # half-way through the decay
    assert progress_multiplier(0, 1.0, cfg) == pytest.approx(0.0)
    steps = OptimizerConfig(warmup_steps=4, schedule="linear")
    assert progress_multiplier(1, 0.5, steps) == pytest.approx(0.5 * 0.5)  # warmup by steps, decay by budget
    wsd = OptimizerConfig(warmup_steps=0, warmup_ratio=0.0, schedule="wsd", decay_ratio=0.2)
    assert progress_multiplier(0, 0.7, wsd) == pytest.approx(1.0)
    assert progress_multiplier(0, 0.9, wsd) == pytest.approx(0.5)


BUDGET = (
    "train.max_steps=null",
    "train.max_time=10s",
    "train.save_every=4",
    "optimizer.warmup_steps=0",
    "optimizer.warmup_ratio=0.2",
)


@pytest.mark.e2e
def test_a_time_budget_stops_saves_and_exports_within_one_step(tiny_data, tmp_path):
    run = tmp_path / "run"
    result = pretrain_here(tiny_data, run, *BUDGET, clock=StepClock(seconds=1.0))  # one second a step
    assert result["step"] == 10 and not result["stopped"]
    assert (
        ckpt.latest_checkpoint(run) == ckpt.step_folder(run, 10)
        and (run / "export" / "config.json").is_file()
    )
    logs = {m["step"]: m for m in metrics(run) if "train/lr" in m}
    assert logs[10]["train/budget_used"] == 1.0 and logs[10]["train/budget_left_s"] == 0.0
    lrs = [logs[s]["train/lr"] for s in sorted(logs)]
    assert max(lrs) == lrs[1] and lrs[-1] == pytest.approx(0.0)  # warmup in the first 10%, decay to the end
    assert ckpt.read_meta(ckpt.step_folder(run, 10))["counters"]["train_seconds"] == 10.0


@pytest.mark.e2e
def test_a_resumed_budget_run_ends_where_an_uninterrupted_one_does(tiny_data, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    pretrain_here(tiny_data, whole, *BUDGET, clock=StepClock())
    stopped = pretrain_here(tiny_data, parts, *BUDGET, faults=("SIGTERM@6",), clock=StepClock())
    assert stopped["stopped"] and stopped["step"] == 6
    assert pretrain_here(tiny_data, parts, *BUDGET, clock=StepClock())["step"] == 10
    a = (ckpt.step_folder(whole, 10) / ckpt.MODEL).read_bytes()
    b = (ckpt.step_folder(parts, 10) / ckpt.MODEL).read_bytes()
    assert a == b, "the resumed run must follow the same schedule to the same end"


@pytest.mark.e2e
def test_a_token_budget_stops_after_the_step_that_reaches_it(tiny_data, tmp_path):
    run = tmp_path / "run"
    result = pretrain_here(
        tiny_data, run, "train.max_steps=null", "train.max_tokens=300", "train.save_every=0"
    )
    tokens = [m["train/tokens"] for m in metrics(run) if "train/tokens" in m]
    assert tokens[-1] >= 300 and tokens[-2] < 300  # the last step is the one that crossed
    assert result["step"] == len(tokens)


@pytest.mark.e2e
def test_two_processes_stop_a_token_budget_at_the_step_one_process_does(tiny_data, tmp_path):
    """Several processes agree on tokens only every log_every steps and extrapolate between: they must still
    stop after the step that crosses the budget, as one process (which counts exactly) does."""
    from tests.pretrain_utils import run_cli

    budget = ("train.max_steps=null", "train.max_tokens=700", "train.save_every=0", "train.log_every=3")
    one = pretrain_here(tiny_data, tmp_path / "one", *budget, "train.batch_size=8")
    done = run_cli(tiny_data, tmp_path / "two", *budget, "train.batch_size=4", nproc=2)
    assert done.returncode == 0, done.stderr[-2000:]
    tokens = [m["train/tokens"] for m in metrics(tmp_path / "two") if "train/tokens" in m]
    assert tokens[-1] >= 700 and max(m["step"] for m in metrics(tmp_path / "two")) == one["step"]
