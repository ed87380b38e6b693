"""The pretraining recipes in configs/pretrain and configs/accelerate load and say what they claim."""

from pathlib import Path

import pytest
import yaml

from bert.config import PretrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "pretrain").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_pretrain_config_loads(path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.train.max_steps > 0 and cfg.model.hidden_size % cfg.model.num_attention_heads == 0


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
