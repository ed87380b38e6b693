"""`bert plot`: the curves of several runs in one PNG, from the files the runs write."""

from __future__ import annotations

import builtins
import json

import pytest

from bert.cli import main
from bert.errors import UserError
from bert.plot import choose_metrics, plot_runs, read_run
from tests.pretrain_utils import pretrain_here


@pytest.mark.e2e
def test_two_pretraining_runs_in_one_png(tiny_data, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for name, lr in (("slow", "1e-3"), ("fast", "3e-3")):
        pretrain_here(
            tiny_data, tmp_path / name, "train.max_steps=6", "train.eval_every=3", f"optimizer.lr={lr}",
            f"logging.run_name=lr-{lr}",
        )  # fmt: skip
    out = tmp_path / "plots" / "compare.png"
    assert main(["plot", str(tmp_path / "slow"), str(tmp_path / "fast"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    runs = [read_run(tmp_path / "slow"), read_run(tmp_path / "fast")]
    assert [name for name, _ in runs] == ["lr-1e-3", "lr-3e-3"]  # the legend: logging.run_name
    panels = choose_metrics(runs, None)
    assert panels[:4] == ["train/loss", "eval/mlm_loss", "train/mlm_accuracy", "eval/mlm_accuracy"]
    with pytest.raises(UserError, match="--metrics: dev/f1 not in these runs"):
        plot_runs([tmp_path / "slow"], tmp_path / "x.png", ["dev/f1"])


def test_a_finetuning_run_plots_every_seed(tmp_path):
    pytest.importorskip("matplotlib")
    for seed in (1, 2):
        history = [
            {"epoch": e, "step": 10 * e, "train/epoch_loss": 1.0 / e, "dev/f1": 0.5 + 0.1 * e} for e in (1, 2)
        ]
        (tmp_path / "mrpc" / f"seed_{seed}").mkdir(parents=True)
        (tmp_path / "mrpc" / f"seed_{seed}" / "metrics.json").write_text(json.dumps({"history": history}))
    name, entries = read_run(tmp_path / "mrpc")
    assert name == "mrpc" and {"seed_1:dev/f1", "seed_2:dev/f1"} <= set(entries[0]) | set(entries[-1])
    assert choose_metrics([(name, entries)], None) == ["train/epoch_loss", "dev/f1"]
    assert plot_runs([tmp_path / "mrpc"], tmp_path / "ft.png").stat().st_size > 10_000


def test_without_matplotlib_one_line_says_what_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(UserError, match=r"pip install 'bertsmith\[plots\]'"):
        plot_runs([tmp_path], tmp_path / "x.png")


def test_without_matplotlib_a_png_is_one_line_naming_the_extra(monkeypatch):
    import sys

    from bert.data.show import draw_png
    from bert.errors import UserError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: its import fails
    with pytest.raises(
        UserError, match=r"bert inspect --png needs matplotlib: pip install 'bertsmith\[plots\]'"
    ):
        draw_png({}, None, "x.png")
