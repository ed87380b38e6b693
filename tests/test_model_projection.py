"""The MLM decoder computed over vocabulary slices, and the tied word-embedding gradient routed through the
lookup: both must give exactly what nn.Linear / nn.Embedding and transformers give."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bert.model.projection as projection
from bert.losses import mlm_loss, nsp_loss
from bert.model.modeling import BertForPreTraining
from bert.model.projection import VocabularyProjection
from tests.model_helpers import hf_twin, make_batch, masked_positions, tiny_config


@pytest.fixture
def small_slices(monkeypatch):
    monkeypatch.setattr(projection, "SLICE_ROWS", 16)  # 99 = 6 slices of 16 + one of 3


def test_sliced_projection_equals_linear_forward_and_backward(small_slices):
    torch.manual_seed(0)
    layer = VocabularyProjection(32, 99)
    hidden = torch.randn(2, 5, 32, requires_grad=True)
    out = layer(hidden)
    assert out.shape == (2, 5, 99)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (hidden, layer.weight, layer.bias), grad)
    expected_out = F.linear(hidden, layer.weight, layer.bias)
    theirs = torch.autograd.grad(expected_out, (hidden, layer.weight, layer.bias), grad)
    torch.testing.assert_close(out, expected_out, atol=1e-6, rtol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sliced_projection_falls_back_to_linear_under_autocast(small_slices, monkeypatch):
    calls = []
    monkeypatch.setattr(projection._SlicedLinear, "apply", lambda *a: calls.append(1))
    layer = VocabularyProjection(32, 99)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(3, 32))
    assert out.dtype == torch.bfloat16 and not calls


@pytest.mark.parametrize("path", ["sdpa", "unpadded"])
def test_tied_gradients_match_transformers_with_sliced_decoder(path, small_slices):
    """One gradient edge into the tied word embeddings (decoder + lookup, [PAD] row excluded from the
    lookup side) gives the same gradients as transformers' two uses of the matrix."""
    torch.manual_seed(4)
    config = tiny_config(attn_implementation=path)
    model = BertForPreTraining(config).train()
    ref = hf_twin(model).train()
    lengths = [16, 9, 3]
    batch = make_batch(lengths, 16, config.vocab_size)  # [PAD] = 0 in the padded columns
    batch["input_ids"][0, 5] = config.pad_token_id  # and once inside a real row: its lookup gets no gradient
    positions, used = masked_positions(lengths, 3)
    labels = torch.where(used, torch.randint(0, config.vocab_size, used.shape), -100)
    hf_labels = torch.full_like(batch["input_ids"], -100)
    rows = torch.arange(3).unsqueeze(1).expand_as(positions)
    hf_labels[rows[used], positions[used]] = labels[used]
    nsp = torch.tensor([0, 1, 1])
    out = model(**batch, masked_lm_positions=positions)
    (mlm_loss(out.prediction_logits, labels) + nsp_loss(out.seq_relationship_logits, nsp)).backward()
    ref(**batch, labels=hf_labels, next_sentence_label=nsp).loss.backward()
    weight = model.bert.embeddings.word_embeddings.weight
    assert weight.grad is not None and weight.grad.layout == torch.strided
    theirs = dict(ref.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=1e-5, rtol=1e-4, msg=name)
