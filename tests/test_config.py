"""Config loading: YAML sections, presets, inheritance, dotted overrides and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bert.config import (
    ConfigError,
    FinetuneConfig,
    PretrainConfig,
    config_keys,
    field_docs,
    flatten,
    load_config,
    save_config,
    to_dict,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_file():
    cfg = load_config(PretrainConfig)
    assert cfg.model.hidden_size == 768
    assert cfg.train.max_steps == 1000
    assert cfg.optimizer.betas == (0.9, 0.999)


def test_yaml_sections_and_overrides(tmp_path):
    path = write(
        tmp_path / "c.yaml", "model:\n  hidden_size: 64\n  num_attention_heads: 2\ntrain:\n  max_steps: 7\n"
    )
    cfg = load_config(
        PretrainConfig, path, ["train.max_steps=100", "model.hidden_size=256", "optimizer.lr=3e-4"]
    )
    assert cfg.train.max_steps == 100
    assert cfg.model.hidden_size == 256
    assert cfg.model.num_attention_heads == 2
    assert cfg.optimizer.lr == pytest.approx(3e-4)


def test_override_values_are_yaml(tmp_path):
    cfg = load_config(
        PretrainConfig,
        None,
        [
            "logging.trackers=[tensorboard, wandb]",
            "data.nsp=false",
            "train.init_from=null",
            "optimizer.betas=[0.9, 0.98]",
        ],
    )
    assert cfg.logging.trackers == ["tensorboard", "wandb"]
    assert cfg.data.nsp is False
    assert cfg.train.init_from is None
    assert cfg.optimizer.betas == (0.9, 0.98)


@pytest.mark.parametrize(
    "name, layers, hidden, heads",
    [
        ("tiny", 2, 128, 2),
        ("mini", 4, 256, 4),
        ("small", 4, 512, 8),
        ("medium", 8, 512, 8),
        ("base", 12, 768, 12),
        ("large", 24, 1024, 16),
    ],
)
def test_model_presets(name, layers, hidden, heads):
    cfg = load_config(PretrainConfig, None, [f"model={name}"])
    m = cfg.model
    assert (m.num_hidden_layers, m.hidden_size, m.num_attention_heads) == (layers, hidden, heads)
    assert m.intermediate_size == 4 * hidden
    assert (m.vocab_size, m.max_position_embeddings) == (30522, 512)


def test_preset_in_file_with_override_inside_it(tmp_path):
    path = write(tmp_path / "c.yaml", "model: mini\n")
    cfg = load_config(PretrainConfig, path, ["model.num_hidden_layers=2"])
    assert cfg.model.hidden_size == 256
    assert cfg.model.num_hidden_layers == 2


def test_preset_plus_fields_in_file(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  _preset: tiny\n  hidden_dropout_prob: 0.0\n")
    cfg = load_config(PretrainConfig, path)
    assert cfg.model.hidden_size == 128 and cfg.model.hidden_dropout_prob == 0.0


def test_base_inheritance(tmp_path):
    write(tmp_path / "phase1.yaml", "model: tiny\ndata:\n  max_seq_length: 128\ntrain:\n  max_steps: 10\n")
    child = write(tmp_path / "phase2.yaml", "base: phase1.yaml\ndata:\n  max_seq_length: 512\n")
    cfg = load_config(PretrainConfig, child)
    assert cfg.data.max_seq_length == 512
    assert cfg.train.max_steps == 10
    assert cfg.model.hidden_size == 128


def test_inheritance_loop_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(PretrainConfig, tmp_path / "a.yaml")


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["train.max_step=5"])
    assert str(err.value).startswith("unknown config key 'train.max_step'; did you mean 'train.max_steps'")


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  hiden_size: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'model.hiden_size'; did you mean 'model.hidden_size'"
    ):
        load_config(PretrainConfig, path)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'; did you mean 'train'"):
        load_config(PretrainConfig, None, ["trian.max_steps=5"])


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"valid keys: .*logging\.trackers"):
        load_config(PretrainConfig, None, ["logging.zzzzzz=1"])


def test_wrong_type_names_field_and_type():
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["train.max_steps=abc"])
    assert str(err.value) == "train.max_steps: expected int | null, got str 'abc'"
    assert "\n" not in str(err.value)


def test_wrong_type_bool_and_literal():
    with pytest.raises(ConfigError, match=r"data.nsp: expected bool, got int 3"):
        load_config(PretrainConfig, None, ["data.nsp=3"])
    with pytest.raises(
        ConfigError,
        match=r"train.mixed_precision: expected one of 'auto' \| 'no' \| 'fp16' \| 'bf16', got 'fp8'",
    ):
        load_config(PretrainConfig, None, ["train.mixed_precision=fp8"])


def test_float_accepts_int_but_int_rejects_float():
    cfg = load_config(PretrainConfig, None, ["optimizer.lr=1"])
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    with pytest.raises(ConfigError, match=r"train.batch_size: expected int, got float 1.5"):
        load_config(PretrainConfig, None, ["train.batch_size=1.5"])


def test_missing_file():
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml"):
        load_config(PretrainConfig, "nope.yaml")


def test_missing_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"model: no preset named 'huge'.*presets: .*base"):
        load_config(PretrainConfig, None, ["model=huge"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(PretrainConfig, None, ["train.max_steps"])


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path / "c.yaml", "train:\n  max_steps: [1,\n")
    with pytest.raises(ConfigError, match=r"c.yaml \(line \d+\): not valid YAML"):
        load_config(PretrainConfig, path)


def test_model_validation_is_one_line():
    with pytest.raises(ConfigError, match="must be divisible"):
        load_config(PretrainConfig, None, ["model.hidden_size=100", "model.num_attention_heads=3"])


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(PretrainConfig, None, ["model=mini", "train.max_steps=3", "optimizer.betas=[0.9,0.98]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(PretrainConfig, tmp_path / "config.yaml") == cfg


def test_finetune_defaults_and_overrides():
    cfg = load_config(FinetuneConfig, None, ["task.name=rte", "train.seeds=[1,2,3]", "model_path=some/dir"])
    assert cfg.task.name == "rte" and cfg.train.seeds == [1, 2, 3] and cfg.model_path == "some/dir"
    assert cfg.optimizer.lr == pytest.approx(5e-5)


def test_every_field_is_documented():
    for cls in (PretrainConfig, FinetuneConfig):
        docs = field_docs(cls)
        assert set(docs) == set(config_keys(cls))
        undocumented = [k for k, v in docs.items() if not v]
        assert undocumented == []


def _file_values(path: Path) -> dict:
    """The leaf values a config file sets (its `base:` files merged in; a section named by a preset, such
    as `model: base`, left out: its values come from the preset file)."""
    from bert.typed_yaml import _read_yaml_tree

    return {k: v for k, v in flatten(_read_yaml_tree(path)).items() if "." in k and not k.endswith("_preset")}


def _assert_file_applied(cls, path: Path) -> None:
    cfg = load_config(cls, path)
    loaded = flatten(to_dict(cfg))
    values = _file_values(path)
    assert values, f"{path} sets nothing"
    for key, value in values.items():
        assert key in loaded, key
        expected = list(value) if isinstance(value, tuple) else value
        if isinstance(expected, float):
            assert loaded[key] == pytest.approx(expected), key
        else:
            assert loaded[key] == expected, key


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parent.parent.glob("configs/pretrain/*.yaml"))
)
def test_shipped_pretrain_configs_load_with_every_value_applied(path):
    _assert_file_applied(PretrainConfig, path)


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).resolve().parent.parent.glob("configs/finetune/*.yaml"))
)
def test_shipped_finetune_configs_load_with_every_value_applied(path):
    _assert_file_applied(FinetuneConfig, path)


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=0", "optimizer.lr must be > 0, got 0.0"),
        ("optimizer.betas=[0.9, 1.0]", "optimizer.betas[1] must be in [0, 1)"),
        ("train.max_steps=0", "train.max_steps must be at least 1"),
        ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps must be at least 1"),
        ("train.keep_last=0", "train.keep_last must be at least 1"),
        ("data.validation_fraction=1.0", "data.validation_fraction must be in [0, 1)"),
        (
            "data.max_seq_length=600",
            "data.max_seq_length must be at most model.max_position_embeddings (512)",
        ),
        ("model.attention_probs_dropout_prob=1", "model.attention_probs_dropout_prob must be in [0, 1)"),
        ("logging.trackers=[tensorbord]", "logging.trackers must be a list of tensorboard and wandb"),
    ],
)
def test_every_value_is_checked_at_load_with_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_finetune_values_are_checked_at_load():
    for override, message in [
        ("train.epochs=0", "train.epochs must be > 0"),
        ("train.seeds=[]", "train.seeds must be a non-empty list"),
        ("task.max_train_examples=0", "task.max_train_examples must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(FinetuneConfig, None, [override])


def test_yaml_booleans_become_the_words_a_choice_expects():
    """YAML 1.1 reads `no`, `off`, `on` as booleans; a field whose choices are words takes the word."""
    cfg = load_config(PretrainConfig, None, ["train.mixed_precision=no", "train.fast_paths=off"])
    assert cfg.train.mixed_precision == "no" and cfg.train.fast_paths == "off"
    assert load_config(PretrainConfig, None, ["train.fast_paths=on"]).train.fast_paths == "on"
    with pytest.raises(ConfigError, match="train.mixed_precision: expected one of"):
        load_config(PretrainConfig, None, ["train.mixed_precision=yes"])


def test_a_preset_on_the_command_line_replaces_the_files_section():
    """`bert pretrain configs/pretrain/demo.yaml model=mini` (the --help example) builds BERT-mini, not the
    demo's 2-layer model with a preset underneath; fields after it apply to the preset."""
    demo = load_config(PretrainConfig, "configs/pretrain/demo.yaml")
    mini = load_config(PretrainConfig, "configs/pretrain/demo.yaml", ["model=mini"])
    assert (
        (mini.model.hidden_size, mini.model.num_hidden_layers)
        == (256, 4)
        != (
            demo.model.hidden_size,
            demo.model.num_hidden_layers,
        )
    )
    tuned = load_config(
        PretrainConfig, "configs/pretrain/demo.yaml", ["model=mini", "model.num_hidden_layers=2"]
    )
    assert (tuned.model.hidden_size, tuned.model.num_hidden_layers) == (256, 2)


def test_fast_paths_on_with_compile_is_refused_in_both_commands():
    """compile traces the reference model, so 'on' could not mean what it says: one line at load."""
    from bert.config import FinetuneConfig

    for cls in (PretrainConfig, FinetuneConfig):
        with pytest.raises(ConfigError, match="train.fast_paths must be auto or off with train.compile=true"):
            load_config(cls, None, ["train.compile=true", "train.fast_paths=on"])
        assert load_config(cls, None, ["train.compile=true", "train.fast_paths=off"]).train.compile
