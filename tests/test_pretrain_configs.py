"""The pretraining recipes in configs/pretrain and configs/accelerate load and say what they claim."""

from pathlib import Path

import pytest
import yaml

from bert.config import PretrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "pretrain").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_pretrain_config_round_trips_and_says_what_it_is(path, tmp_path):
    """Each recipe, resolved and written as a run's config.yaml, reads back as the same config (a re-run from
    runs/NAME/config.yaml trains the same thing), and opens with a comment saying what it is for."""
    from bert.config import save_config

    cfg = load_config(PretrainConfig, path)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(PretrainConfig, tmp_path / "config.yaml") == cfg
    assert path.read_text().startswith("#")


@pytest.mark.parametrize("name", ["bert_base_phase1", "mosaicbert_style", "crammed_bert"])
def test_every_recipe_names_its_source_and_the_result_to_compare_with(name):
    text = (CONFIGS / "pretrain" / f"{name}.yaml").read_text()
    header = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    assert "Follows" in header and "Published result to compare with" in header


def test_the_recipes_say_what_they_claim():
    mosaic = load_config(PretrainConfig, CONFIGS / "pretrain" / "mosaicbert_style.yaml")
    assert (mosaic.data.masked_lm_prob, mosaic.data.nsp, mosaic.optimizer.schedule) == (0.3, False, "linear")
    assert mosaic.data.max_predictions_per_seq >= 0.3 * mosaic.data.max_seq_length
    assert mosaic.train.batch_size * mosaic.train.gradient_accumulation_steps * 8 == 4096
    crammed = load_config(PretrainConfig, CONFIGS / "pretrain" / "crammed_bert.yaml")
    assert crammed.train.max_time == "24h" and crammed.train.max_steps is None and not crammed.data.nsp
    assert crammed.model.hidden_dropout_prob == 0 and crammed.optimizer.max_grad_norm == 0.5
    assert crammed.train.batch_size * crammed.train.gradient_accumulation_steps == 1536


def test_phase2_inherits_phase1_and_starts_from_its_export():
    one = load_config(PretrainConfig, CONFIGS / "pretrain" / "bert_base_phase1.yaml")
    two = load_config(PretrainConfig, CONFIGS / "pretrain" / "bert_base_phase2.yaml")
    assert (one.data.max_seq_length, two.data.max_seq_length) == (128, 512)
    assert two.train.init_from == "runs/bert_base_phase1/export" == str(Path(one.train.output_dir) / "export")
    assert two.model == one.model and two.optimizer.name == "lamb" and two.data.corpus == one.data.corpus
    large = load_config(PretrainConfig, CONFIGS / "pretrain" / "bert_large.yaml")
    assert (large.model.num_hidden_layers, large.model.hidden_size) == (24, 1024)


def test_demo_is_small_and_synthetic():
    cfg = load_config(PretrainConfig, CONFIGS / "pretrain" / "demo.yaml")
    assert cfg.data.corpus == ["synthetic"] and cfg.data.vocab_size <= 4096 and cfg.optimizer.lr >= 1e-3


@pytest.mark.parametrize("path", sorted((CONFIGS / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_configs_are_valid_yaml(path):
    data = yaml.safe_load(path.read_text())
    assert data["num_processes"] >= 1 and "distributed_type" in data
