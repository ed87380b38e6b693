"""Loading and saving in the Hugging Face layout: round trips, transformers interop, tied weights, warnings."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from bert.errors import UserError
from bert.model.modeling import BertForPreTraining, BertForSequenceClassification, BertModel
from tests.model_helpers import hf_config, make_batch, tiny_config


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_save_load_round_trip_is_exact_and_retied(tmp_path):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(pre_layer_norm=True))
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "cls.predictions.decoder.weight" not in saved  # tied: written once, as the word embeddings
    loaded = BertForPreTraining.from_pretrained(tmp_path)
    assert loaded.config.attn_implementation == "sdpa" and loaded.config.pre_layer_norm
    assert loaded.config == model.config.__class__(
        **{**model.config.to_dict(), "architectures": ["BertForPreTraining"]}
    )
    _equal_state(model, loaded)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    assert loaded.cls.predictions.decoder.bias is loaded.cls.predictions.bias


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (BertForPreTraining, transformers.BertForPreTraining),
        (BertModel, transformers.BertModel),
        (BertForSequenceClassification, transformers.BertForSequenceClassification),
    ],
)
def test_transformers_loads_our_folder_with_no_missing_keys(tmp_path, ours, theirs):
    torch.manual_seed(0)
    model = ours(tiny_config(num_labels=3, attn_implementation="unpadded")).eval()
    model.save_pretrained(tmp_path)
    # Our attention path is stored under a key transformers does not act on (it rejects 'unpadded').
    assert ours.from_pretrained(tmp_path).config.attn_implementation == "unpadded"
    ref, info = theirs.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    batch = make_batch([8, 5], 8, 99)
    with torch.no_grad():
        a, b = model(**batch), ref.eval()(**batch)
    key = "logits" if ours is BertForSequenceClassification else "pooler_output"
    if ours is BertForPreTraining:
        key = "seq_relationship_logits"
    torch.testing.assert_close(getattr(a, key), getattr(b, key), atol=1e-5, rtol=0)


def test_we_load_a_transformers_folder_exactly(tmp_path):
    torch.manual_seed(0)
    ref = transformers.BertForPreTraining(hf_config(tiny_config()))
    ref.save_pretrained(tmp_path)
    model = BertForPreTraining.from_pretrained(tmp_path)
    theirs = ref.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, theirs[key]), key


def test_bare_encoder_checkpoint_without_prefix_warns_naming_the_heads(tmp_path):
    torch.manual_seed(0)
    encoder = BertModel(tiny_config())
    encoder.save_pretrained(tmp_path)
    assert next(iter(load_file(str(tmp_path / "model.safetensors")))).startswith(
        ("embeddings.", "encoder.", "pooler.")
    )
    with pytest.warns(
        UserWarning, match=r"cls\.predictions\.transform\.dense\.weight.*cls\.seq_relationship"
    ):
        model = BertForPreTraining.from_pretrained(tmp_path)
    for key, value in encoder.state_dict().items():
        assert torch.equal(model.state_dict()["bert." + key], value), key
    # The other way round: a full checkpoint into the bare encoder drops the prefix and the heads, silently.
    model.save_pretrained(tmp_path / "full")
    bare = BertModel.from_pretrained(tmp_path / "full")
    _equal_state(bare, encoder)


def test_pytorch_bin_is_read_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = BertModel(tiny_config())
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    _equal_state(BertModel.from_pretrained(tmp_path), model)


def test_safetensors_is_preferred_over_bin(tmp_path):
    torch.manual_seed(0)
    model = BertModel(tiny_config())
    model.save_pretrained(tmp_path)
    torch.save(
        {k: torch.zeros_like(v) for k, v in model.state_dict().items()}, tmp_path / "pytorch_model.bin"
    )
    _equal_state(BertModel.from_pretrained(tmp_path), model)


def test_config_overrides_and_mismatched_shapes(tmp_path):
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_config(num_labels=2)).save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="unpadded")
    assert model.config.attn_implementation == "unpadded" and model.config.num_labels == 2
    with pytest.raises(UserError, match=r"classifier\.(weight|bias) has shape"):
        BertForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    with pytest.warns(UserWarning, match="classifier.weight"):
        model = BertForSequenceClassification.from_pretrained(
            tmp_path, num_labels=5, ignore_mismatched_sizes=True
        )
    assert model.classifier.weight.shape == (5, 32)


def test_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(UserError, match="model.safetensors"):
        BertModel.from_pretrained(tmp_path)


def test_old_layernorm_gamma_beta_names_are_read(tmp_path):
    torch.manual_seed(0)
    model = BertModel(tiny_config())
    model.config.save_pretrained(tmp_path)
    state = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in model.state_dict().items()
    }
    save_file(state, str(tmp_path / "model.safetensors"))
    _equal_state(BertModel.from_pretrained(tmp_path), model)
