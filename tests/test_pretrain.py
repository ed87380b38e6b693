"""The pretraining loop (bert/pretrain.py) on a tiny model: loss normalisation, processes, export, NaN guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bert import checkpoint as ckpt
from bert.errors import UserError
from tests.pretrain_utils import (
    metrics,
    pretrain_here,
    recorded_ids,
    run_cli,
    train_losses,
    weights,
)

NO_DROPOUT = ("model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0")
# Tests that compare two summation orders of one step to 1e-5 run in fp32: `mixed_precision=auto` picks bf16
# on a CPU with bf16 units, whose rounding is far coarser than the orders' difference.
EXACT = (*NO_DROPOUT, "train.mixed_precision=no")

pytestmark = pytest.mark.e2e  # every test here runs whole pretraining jobs


@pytest.fixture(scope="module")
def cache(tiny_data) -> Path:
    return tiny_data


def _final(run_dir: Path, step: int = 6) -> dict[str, torch.Tensor]:
    return weights(ckpt.step_folder(run_dir, step))


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < atol, f"weights differ by {worst}"


def test_gradient_accumulation_equals_one_big_batch(cache, tmp_path):
    big = pretrain_here(cache, tmp_path / "big", *EXACT, "train.batch_size=8")
    acc = pretrain_here(
        cache, tmp_path / "acc", *EXACT, "train.batch_size=2", "train.gradient_accumulation_steps=4"
    )
    big_losses, acc_losses = train_losses(tmp_path / "big"), train_losses(tmp_path / "acc")
    assert len(big_losses) == 6
    for step, loss in big_losses.items():
        assert acc_losses[step] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    _assert_close(_final(tmp_path / "big"), _final(tmp_path / "acc"))
    assert big["step"] == acc["step"] == 6


def test_two_processes_equal_one(cache, tmp_path):
    pretrain_here(cache, tmp_path / "one", *EXACT, "train.batch_size=8", record_ids=True)
    result = run_cli(cache, tmp_path / "two", *EXACT, "train.batch_size=4", record_ids=True, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(two) == 6
    for step, loss in one.items():
        assert two[step] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    _assert_close(_final(tmp_path / "one"), _final(tmp_path / "two"))
    # each rank read its own half of every global batch: disjoint, and together what one process read
    single = recorded_ids(tmp_path / "one")
    rank0, rank1 = recorded_ids(tmp_path / "two", 0), recorded_ids(tmp_path / "two", 1)
    for a, b, ref in zip(rank0, rank1, single):
        ids0, ids1 = {tuple(x) for x in a["examples"]}, {tuple(x) for x in b["examples"]}
        assert len(ids0) == len(ids1) == 4 and not ids0 & ids1
        assert a["examples"] + b["examples"] == ref["examples"]
    # both ranks wrote their RNG state into the same checkpoint
    assert (ckpt.step_folder(tmp_path / "two", 6) / ckpt.rng_file(1)).is_file()


def test_export_loads_in_transformers(cache, tmp_path):
    transformers = pytest.importorskip("transformers")
    result = pretrain_here(cache, tmp_path / "run", "train.max_steps=2")
    export = Path(result["export"])
    assert (export / "config.json").is_file() and (export / "vocab.txt").is_file()
    model, info = transformers.BertForPreTraining.from_pretrained(export, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert transformers.AutoTokenizer.from_pretrained(export).vocab_size == model.config.vocab_size
    # `bert export` of the last checkpoint writes the same weights
    from bert.cli import main

    assert main(["export", str(tmp_path / "run"), str(tmp_path / "again")]) == 0
    ours, again = weights(export), weights(tmp_path / "again")
    assert ours.keys() == again.keys() and all(torch.equal(ours[k], again[k]) for k in ours)
    assert (tmp_path / "again" / "vocab.txt").is_file()


def test_nan_gradients_skip_the_step(cache, tmp_path):
    run = tmp_path / "run"
    result = pretrain_here(cache, run, "train.max_steps=4", "train.save_every=0", faults=("nan@3",))
    assert result["step"] == 4
    logs = [m for m in metrics(run) if "train/skipped_steps" in m]
    assert [m["train/skipped_steps"] for m in logs] == [0, 0, 1, 1]
    assert all(torch.isfinite(w).all() for w in weights(result["export"]).values())
    meta = ckpt.read_meta(ckpt.latest_checkpoint(run))
    assert meta["counters"]["skipped_steps"] == 1


def test_nan_guard_stops_after_too_many(cache, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError, match="consecutive steps had a non-finite"):
        pretrain_here(cache, run, "train.max_nonfinite_steps=1", faults=("nan@3",))
    # the healthy checkpoint of step 2 is still there, and nothing later was saved
    assert ckpt.latest_checkpoint(run) == ckpt.step_folder(run, 2)


def test_resume_with_another_model_size_says_what_differs(cache, tmp_path):
    run = tmp_path / "run"
    pretrain_here(cache, run, "train.max_steps=2")
    with pytest.raises(UserError) as err:
        pretrain_here(cache, run, "train.max_steps=4", "model.hidden_size=64", "model.intermediate_size=128")
    message = str(err.value)
    assert "model.hidden_size: 32 -> 64" in message and "model.intermediate_size: 64 -> 128" in message
    assert "\n" not in message
    shutil.rmtree(run / "export")


def test_init_from_loads_weights_without_resuming(cache, tmp_path):
    first = pretrain_here(cache, tmp_path / "a", "train.max_steps=2")
    second = pretrain_here(
        cache, tmp_path / "b", "train.max_steps=1", f"train.init_from={first['export']}", "optimizer.lr=1e-12"
    )
    assert second["step"] == 1  # a fresh run (not a resume of step 2), starting from a's weights
    a, b = weights(first["export"]), weights(second["export"])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_compiled_training_runs_and_saves_plain_names(cache, tmp_path):
    """train.compile=true traces the model (backend 'eager': no code generation on 2 cores)."""
    run = tmp_path / "run"
    result = pretrain_here(
        cache, run, "train.max_steps=2", "model.attn_implementation=sdpa", "train.compile=true",
        "train.compile_backend=eager",
    )  # fmt: skip
    assert result["step"] == 2
    saved = weights(ckpt.step_folder(run, 2))
    assert saved and not any(k.startswith("_orig_mod") for k in saved)
    assert ckpt.read_meta(ckpt.step_folder(run, 2))["config"]["train"]["compile"] is True


def test_the_vocabulary_is_padded_for_training_and_exported_exactly(cache, tmp_path):
    """train.pad_vocab_multiple pads the model's vocabulary tables; the export (and `bert export` of a
    checkpoint) has the tokenizer's vocabulary, and loads in transformers with the same logits."""
    transformers = pytest.importorskip("transformers")
    from bert.export import export_checkpoint
    from bert.tokenizer import load_tokenizer

    run = tmp_path / "run"
    result = pretrain_here(cache, run, "train.max_steps=2", "train.pad_vocab_multiple=64")
    vocab = load_tokenizer(result["export"]).get_vocab_size()
    trained = weights(ckpt.step_folder(run, 2))["bert.embeddings.word_embeddings.weight"]
    assert trained.shape[0] % 64 == 0 and trained.shape[0] > vocab  # padded while training
    for folder in (result["export"], export_checkpoint(run, tmp_path / "exported")):
        exported = weights(folder)
        assert exported["bert.embeddings.word_embeddings.weight"].shape[0] == vocab
        assert torch.equal(exported["bert.embeddings.word_embeddings.weight"], trained[:vocab])
        hf = transformers.BertForPreTraining.from_pretrained(folder)
        assert hf.config.vocab_size == vocab
    unpadded = pretrain_here(cache, tmp_path / "one", "train.max_steps=1", "train.pad_vocab_multiple=1")
    assert weights(unpadded["export"])["bert.embeddings.word_embeddings.weight"].shape[0] == vocab


def test_an_exported_tokenizer_truncates_to_the_models_positions(cache, tmp_path):
    """The tiny model has 64 positions: `tokenizer(long_text, truncation=True)` must fit it (it said 512)."""
    transformers = pytest.importorskip("transformers")
    result = pretrain_here(cache, tmp_path / "run", "train.max_steps=1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(result["export"])
    model = transformers.BertForPreTraining.from_pretrained(result["export"]).eval()
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 64
    encoded = tokenizer("word " * 500, truncation=True, return_tensors="pt")
    assert encoded["input_ids"].shape[1] == 64
    with torch.no_grad():
        model(**encoded)  # runs: no position beyond the table


def test_an_export_carries_a_model_card_the_hub_reads(cache, tmp_path):
    """README.md with Hugging Face metadata and the run's facts, in the run's export and in `bert export`'s."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from bert.export import export_checkpoint

    run = tmp_path / "run"
    result = pretrain_here(cache, run, "train.max_steps=2", "train.eval_every=2")
    for folder in (Path(result["export"]), export_checkpoint(run, tmp_path / "exported")):
        card = huggingface_hub.ModelCard.load(folder / "README.md")
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "fill-mask"
        text = card.text
        assert "BERT L2/H32/A2" in text and "Steps: 2;" in text and "Hardware: 1 x " in text
        precision = ckpt.read_meta(ckpt.step_folder(run, 2))["provenance"]["precision"]  # no, or bf16 (auto)
        assert f"precision: {precision}" in text and "MLM loss: " in text and "Prepared: " in text
        assert "How to reproduce" in text and "max_steps: 2" in text  # the resolved config
        runs = ckpt.read_meta(ckpt.step_folder(run, 2))[
            "runs"
        ]  # what computed the steps, not only the config
        assert (
            runs["precision"] == precision
            and runs["attention"] in text
            and "Computed with: attention" in text
        )
        config = json.loads((folder / "config.json").read_text())
        assert (
            config["transformers_version"] and config["model_type"] == "bert" and config["use_cache"] is True
        )


def test_a_pre_ln_export_cannot_load_silently_as_post_ln(cache, tmp_path, caplog):
    """transformers' BERT is post-LN: a pre-LN export names its own model type, which AutoConfig and
    AutoModel refuse and the BERT classes warn of; this project's loader reads it with the same outputs."""
    transformers = pytest.importorskip("transformers")
    import logging

    from bert.model import BertForPreTraining

    result = pretrain_here(cache, tmp_path / "run", "train.max_steps=1", "model.pre_layer_norm=true")
    folder = Path(result["export"])
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bertsmith-preln"
    for loader in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoModelForMaskedLM):
        with pytest.raises(ValueError, match="bertsmith-preln"):
            loader.from_pretrained(folder)
    transformers.logging.enable_propagation()
    with caplog.at_level(logging.WARNING):
        transformers.BertForPreTraining.from_pretrained(folder)
    assert "bertsmith-preln" in caplog.text  # the direct class says it is another type
    ours = BertForPreTraining.from_pretrained(folder)
    assert ours.config.pre_layer_norm is True
    assert "load it with bertsmith" in (folder / "README.md").read_text()
