"""Parity with transformers: copied random weights, every attention path, several configs and paddings, for
the reference model and for the fast paths."""

from __future__ import annotations

import pytest
import torch
import transformers

import bert.model.fast.mlm as fast_mlm
from bert.batch import PretrainingBatch
from bert.bench import hf_mlm_labels
from bert.losses import mlm_loss, nsp_loss, pretraining_loss
from bert.model.modeling import BertForPreTraining, BertForSequenceClassification, BertModel
from tests.model_helpers import (
    VARIANTS,
    as_variant,
    cross_entropy_of,
    hf_twin,
    make_batch,
    masked_positions,
    tiny_config,
)

PATHS = ["eager", "sdpa", "unpadded"]
PADDINGS = {
    "none": [16, 16, 16],
    "ragged": [16, 9, 3],
    "one_token": [1, 16, 5],
    "empty_row": [16, 0, 7],
}
CONFIGS = {
    "default": {},
    "gelu_new": {"hidden_act": "gelu_new", "layer_norm_eps": 1e-5},
    "wide_heads": {
        "hidden_size": 48,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "type_vocab_size": 3,
    },
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config_name", CONFIGS)
def test_hidden_states_and_pooler_match_hf(config_name, path, padding, variant):
    torch.manual_seed(0)
    config = tiny_config(attn_implementation=path, **CONFIGS[config_name])
    model = BertModel(config).eval()
    ref = hf_twin(model, transformers.BertModel)
    model = as_variant(model, variant)
    lengths = PADDINGS[padding]
    batch = make_batch(lengths, 16, config.vocab_size)
    with torch.no_grad():
        ours = model(**batch)
        theirs = ref(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(
        ours.last_hidden_state[real], theirs.last_hidden_state[real], atol=1e-5, rtol=0
    )
    # A row without real tokens has no meaningful [CLS]; every other pooled output must match.
    has_tokens = real.any(1)
    torch.testing.assert_close(
        ours.pooler_output[has_tokens], theirs.pooler_output[has_tokens], atol=1e-5, rtol=0
    )
    assert torch.isfinite(ours.last_hidden_state).all() and torch.isfinite(ours.pooler_output).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", PATHS)
def test_pretraining_logits_and_losses_match_hf(path, variant):
    torch.manual_seed(1)
    config = tiny_config(attn_implementation=path)
    model = BertForPreTraining(config).eval()
    ref = hf_twin(model)
    model = as_variant(model, variant)
    lengths = [16, 11, 4]  # row 2: 3 masked tokens and a padding slot
    batch = make_batch(lengths, 16, config.vocab_size)
    positions, used = masked_positions(lengths, 4)
    labels = torch.where(used, torch.randint(0, config.vocab_size, used.shape), -100)
    nsp = torch.tensor([0, 1, 1])
    with torch.no_grad():
        ours = model(**batch, masked_lm_positions=positions)
        full = model(**batch)
        theirs = ref(**batch)
    rows = torch.arange(3).unsqueeze(1).expand_as(positions)
    assert ours.prediction_logits.shape == (3, 4, config.vocab_size)
    torch.testing.assert_close(
        ours.prediction_logits[used], theirs.prediction_logits[rows[used], positions[used]], atol=1e-5, rtol=0
    )
    assert (~used).any() and (ours.prediction_logits[~used] == 0).all()  # padding slots: logits 0
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(
        full.prediction_logits[real], theirs.prediction_logits[real], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        ours.seq_relationship_logits, theirs.seq_relationship_logits, atol=1e-5, rtol=0
    )
    # Losses: HF computes them from (B, T) labels; ours from the (B, P) slots.
    hf_labels = hf_mlm_labels(batch["input_ids"], positions, labels)
    with torch.no_grad():
        hf_loss = ref(**batch, labels=hf_labels, next_sentence_label=nsp).loss
    ce = cross_entropy_of(variant)
    ours_loss = mlm_loss(ours.prediction_logits, labels, cross_entropy=ce) + nsp_loss(
        ours.seq_relationship_logits, nsp
    )
    torch.testing.assert_close(ours_loss, hf_loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", PATHS)
def test_gradients_of_one_step_match_hf(path, variant):
    """Every parameter's gradient, the tied word embeddings included (the fast path routes the decoder's
    and the lookup's shares through one autograd edge; transformers uses the matrix twice). A [PAD] id
    inside a real row gets no lookup gradient."""
    torch.manual_seed(2)
    config = tiny_config(attn_implementation=path)
    model = BertForPreTraining(config).train()
    ref = hf_twin(model).train()
    model = as_variant(model, variant)
    lengths = [16, 10, 4]
    batch = make_batch(lengths, 16, config.vocab_size)
    batch["input_ids"][0, 5] = config.pad_token_id
    positions, used = masked_positions(lengths, 3)
    labels = torch.where(used, torch.randint(0, config.vocab_size, used.shape), -100)
    nsp = torch.tensor([1, 0, 1])
    ours = PretrainingBatch(
        **batch, masked_lm_positions=positions, masked_lm_labels=labels, next_sentence_label=nsp
    )
    out = model(**ours.model_inputs())
    pretraining_loss(out, ours, cross_entropy=cross_entropy_of(variant)).loss.backward()
    hf_labels = hf_mlm_labels(batch["input_ids"], positions, labels)
    ref(**batch, labels=hf_labels, next_sentence_label=nsp).loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.layout == torch.strided
    theirs = dict(ref.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_gradients_match_hf_with_small_vocabulary_slices(monkeypatch):
    """The fast decoder over slices of 16 rows (99 = 6 x 16 + 3) still gives every gradient."""
    monkeypatch.setattr(fast_mlm, "SLICE_ROWS", 16)
    test_gradients_of_one_step_match_hf("unpadded", "fast")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_labels", [3, 1])
def test_sequence_classification_matches_hf(num_labels, variant):
    torch.manual_seed(3)
    config = tiny_config(num_labels=num_labels, attn_implementation="unpadded")
    model = BertForSequenceClassification(config).eval()
    ref = hf_twin(model, transformers.BertForSequenceClassification)
    model = as_variant(model, variant)
    batch = make_batch([16, 5], 16, config.vocab_size)
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = ref(**batch).logits
    assert ours.shape == (2, num_labels)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
