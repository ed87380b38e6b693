"""bert/training.py: the launch check, the stop signal, the fast-path and compile set-up of a model."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from bert.config import TrainConfig
from bert.model.modeling import BertForPreTraining
from bert.training import StopSignal, launch_mismatch, prepare_model
from tests.model_helpers import tiny_config


def test_a_cpu_launch_that_started_fewer_processes_than_asked_is_named(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parent = [
        "/usr/bin/python",
        "/venv/bin/accelerate",
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "-m",
        "bert.cli",
    ]
    warning = launch_mismatch(1, parent)
    assert "asked for 2 processes, 1 started" in warning and "torchrun --nproc_per_node 2" in warning
    assert launch_mismatch(2, parent) is None
    assert launch_mismatch(1, ["python", "-m", "bert.cli", "pretrain"]) is None  # not a launcher: silent
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launch_mismatch(2, []) == "WORLD_SIZE=4 but 2 process(es) joined"


def test_the_stop_signal_sets_a_flag_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignal()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_prepare_model_picks_fast_paths_or_compiles():
    model, paths = prepare_model(BertForPreTraining(tiny_config()), torch.device("cpu"), TrainConfig())
    assert paths.head_rows and type(model.bert.encoder).__name__ == "HeadRowsEncoder"
    cfg = TrainConfig(compile=True, compile_backend="eager")
    model, paths = prepare_model(BertForPreTraining(tiny_config()), torch.device("cpu"), cfg)
    assert not paths.names() and type(model.bert.encoder).__name__ == "BertEncoder"
    assert model._compiled_call_impl is not None  # nn.Module.compile: in place, state dict keys unchanged
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())


@pytest.mark.e2e
def test_release_freed_memory_is_safe_to_call_and_finetuning_calls_it(monkeypatch, tmp_path):
    import bert.finetune.loop as loop
    from bert.training import release_freed_memory

    release_freed_memory()  # glibc: malloc_trim; elsewhere nothing; never an error
    calls = []
    monkeypatch.setattr(loop, "release_freed_memory", lambda: calls.append(1))
    from bert.config import FinetuneConfig, load_config
    from tests.finetune_helpers import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    cfg = load_config(
        FinetuneConfig,
        None,
        [
            f"model_path={model}", "task.name=synthetic", "task.synthetic_pairs=64", "task.synthetic.num_documents=200",
            f"train.output_dir={tmp_path / 'out'}", "train.epochs=1", "train.global_batch_size=8", "train.max_length=32",
            "train.release_memory_every=2", "train.cache_dir=null", "logging.trackers=[]", "train.predict_test=false",
        ],
    )  # fmt: skip
    loop.finetune(cfg)
    assert len(calls) == 64 // 8 // 2 + 1  # every 2nd of 8 steps, and after the evaluation


def test_peak_rss_is_this_processs_own_not_a_large_parents():
    import subprocess
    import sys

    from bert.training import peak_rss_gb

    assert 0.01 < peak_rss_gb() < 64  # this test process: torch is loaded
    ballast = bytearray(600 * 2**20)  # the parent touches 600 MiB before starting the child
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    code = (
        "import resource; from bert.training import peak_rss_gb; "
        "print(peak_rss_gb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)"
    )
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())  # fmt: skip
    del ballast
    if not sys.platform.startswith("linux"):  # /proc and the negative control's ru_maxrss are Linux's
        pytest.skip("peak RSS from /proc, and ru_maxrss over exec, are Linux's")
    assert inherited > 0.55, "negative control: ru_maxrss carries the parent's peak over exec"
    assert own < 0.5, own


@pytest.mark.e2e
def test_pretraining_on_the_cpu_hands_freed_memory_back_every_n_steps(tiny_data, tmp_path, monkeypatch):
    import bert.pretrain.loop as loop
    from tests.pretrain_utils import metrics, pretrain_here

    calls = []
    monkeypatch.setattr(loop, "release_freed_memory", lambda: calls.append(1))
    pretrain_here(tiny_data, tmp_path / "a", "train.max_steps=6", "train.release_memory_every=2")
    assert len(calls) == 3
    assert all(m["train/rss_gb"] > 0 for m in metrics(tmp_path / "a") if "train/loss" in m)
    calls.clear()
    pretrain_here(tiny_data, tmp_path / "b", "train.max_steps=6", "train.release_memory_every=null")
    assert calls == []


def test_precision_auto_takes_the_launchers_then_the_hardwares_and_an_explicit_value_wins(monkeypatch):
    from bert.training import precision_line, resolve_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto", cuda=False, cpu_bf16=False) == ("no", "auto: this CPU has no bf16 units")
    assert resolve_precision("auto", cuda=False, cpu_bf16=True) == ("bf16", "auto: this CPU has bf16 units")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda=True) == ("bf16", "auto: this GPU has bf16")
    monkeypatch.setenv(
        "ACCELERATE_MIXED_PRECISION", "fp16"
    )  # what `accelerate launch` exports from its config
    assert resolve_precision("auto", cuda=True) == ("fp16", "the launcher's setting")
    assert resolve_precision("no", cuda=True) == ("no", "train.mixed_precision")  # the config wins
    line = precision_line("no", "train.mixed_precision", torch.device("cuda"))
    assert line == "precision: fp32 (train.mixed_precision); TF32 matmuls"


def test_the_cpus_bf16_units_are_read_from_torchs_probes(monkeypatch):
    from bert.training import cpu_bf16_units, resolve_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_bf16_units() == "AVX-512 BF16"
    assert resolve_precision("auto", cuda=False) == ("bf16", "auto: this CPU has AVX-512 BF16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert cpu_bf16_units() is None and resolve_precision("auto", cuda=False)[0] == "no"
    # a narrow model stays fp32 even with bf16 units: the casts cost more than the small matmuls save
    assert resolve_precision("auto", cuda=False, cpu_bf16=True, width=128)[0] == "no"
    assert resolve_precision("auto", cuda=False, cpu_bf16=True, width=256)[0] == "bf16"
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)  # an older torch: no probe
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert cpu_bf16_units() is None
