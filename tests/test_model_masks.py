"""The mask rules of bert/model/masks.py, each tested on every attention path, for the reference model and the
fast paths: padding never moves real outputs, no NaN for fully padded rows in fp32/fp16/bf16, eager masked
keys get weight 0, unpadded attention sees real tokens only, the MLM head runs at masked positions only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bert.model.attention as attention
from bert.model.masks import PaddedLayout, UnpaddedLayout, key_padding_mask, padded_layout, unpadded_layout
from bert.model.modeling import BertForPreTraining, BertModel
from tests.model_helpers import VARIANTS, as_variant, make_batch, masked_positions, tiny_config

PATHS = ["eager", "sdpa", "unpadded"]


def _shared_weights(config_kwargs: dict, paths=PATHS, variant: str = "reference") -> dict[str, BertModel]:
    torch.manual_seed(0)
    first = BertModel(tiny_config(attn_implementation=paths[0], **config_kwargs)).eval()
    models = {paths[0]: first}
    for path in paths[1:]:
        model = BertModel(tiny_config(attn_implementation=path, **config_kwargs)).eval()
        model.load_state_dict(first.state_dict())
        models[path] = model
    return {path: as_variant(model, variant) for path, model in models.items()}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pre_ln", [False, True])
def test_all_paths_agree_in_fp32(pre_ln, variant):
    models = _shared_weights({"pre_layer_norm": pre_ln}, variant=variant)
    batch = make_batch([12, 7, 1, 0], 12, 99)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        outs = {path: m(**batch) for path, m in models.items()}
    for path in ("sdpa", "unpadded"):
        torch.testing.assert_close(
            outs[path].last_hidden_state[real], outs["eager"].last_hidden_state[real], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            outs[path].pooler_output[:3], outs["eager"].pooler_output[:3], atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pre_ln", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_padding_never_changes_real_outputs(path, pre_ln, variant):
    torch.manual_seed(0)
    model = as_variant(
        BertModel(tiny_config(attn_implementation=path, pre_layer_norm=pre_ln)).eval(), variant
    )
    batch = make_batch([9, 5], 9, 99)
    longer = make_batch([9, 5], 20, 99)
    longer["input_ids"][:, :9] = batch["input_ids"]
    longer["token_type_ids"][:, :9] = batch["token_type_ids"]
    longer["input_ids"][1, 5:] = torch.randint(5, 99, (15,))  # junk under the padding must not matter
    longer["token_type_ids"][1, 5:] = 1
    with torch.no_grad():
        short_out = model(**batch)
        long_out = model(**longer)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(
        long_out.last_hidden_state[:, :9][real], short_out.last_hidden_state[real], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(long_out.pooler_output, short_out.pooler_output, atol=1e-5, rtol=0)
    # Row 1 alone, without any padding, gives the same real outputs.
    alone = {k: v[1:, :5] for k, v in batch.items()}
    with torch.no_grad():
        alone_out = model(**alone)
    torch.testing.assert_close(
        alone_out.last_hidden_state[0], short_out.last_hidden_state[1, :5], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_unpadded_pretraining_equals_padded_with_dropout_off(variant):
    torch.manual_seed(0)
    padded = BertForPreTraining(tiny_config(attn_implementation="sdpa")).eval()
    unpadded = BertForPreTraining(tiny_config(attn_implementation="unpadded")).eval()
    unpadded.load_state_dict(padded.state_dict())
    padded, unpadded = as_variant(padded, variant), as_variant(unpadded, variant)
    lengths = [16, 3, 10, 0]
    batch = make_batch(lengths, 16, 99)
    positions, _ = masked_positions(lengths, 5)
    with torch.no_grad():
        a = padded(**batch, masked_lm_positions=positions)
        b = unpadded(**batch, masked_lm_positions=positions)
    has_tokens = batch["attention_mask"].any(1)
    torch.testing.assert_close(
        b.prediction_logits[has_tokens], a.prediction_logits[has_tokens], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        b.seq_relationship_logits[has_tokens], a.seq_relationship_logits[has_tokens], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_low_precision_with_fully_padded_rows_has_no_nan(path, dtype, variant):
    torch.manual_seed(0)
    model = as_variant(BertForPreTraining(tiny_config(attn_implementation=path)).eval(), variant)
    lengths = [12, 0, 4]
    batch = make_batch(lengths, 12, 99)
    positions, _ = masked_positions(lengths, 3)
    with torch.no_grad():
        cast = model.to(dtype)(**batch, masked_lm_positions=positions)
        model.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(**batch, masked_lm_positions=positions)
    for out in (cast, auto):
        assert torch.isfinite(out.prediction_logits).all()
        assert torch.isfinite(out.seq_relationship_logits).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_eager_kernel_fills_with_the_minimum_of_the_scores_own_dtype(dtype):
    """A fully masked query row (possible only if a caller passes such a mask) stays finite, and masked keys
    get exactly 0 where some key is real: no -inf arithmetic, no finfo.min cast across dtypes."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 3, 4, dtype=dtype) for _ in range(3))
    key_mask = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    context, probs = attention.eager_attention(q, k, v, key_mask, 0.0)
    assert torch.isfinite(context).all() and (probs[..., 2] == 0).all()
    none = torch.zeros(1, 1, 1, 3, dtype=torch.bool)
    context, probs = attention.eager_attention(q, k, v, none, 0.0)
    assert torch.isfinite(context).all() and torch.isfinite(probs).all()


def test_eager_probabilities_ignore_padding_and_fully_padded_rows_attend_everywhere():
    torch.manual_seed(0)
    model = BertModel(tiny_config(attn_implementation="eager")).eval()
    batch = make_batch([6, 0], 8, 99)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    assert len(out.attentions) == 2
    probs = out.attentions[0]  # (B, A, T, T)
    assert probs.shape == (2, 4, 8, 8)
    assert probs[0, :, :, 6:].abs().max() == 0  # padded keys get exactly zero weight
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 8))
    # A row without real tokens is treated as all real (finite, cannot affect other rows).
    unmasked = {**batch, "attention_mask": torch.ones_like(batch["attention_mask"])}
    with torch.no_grad():
        reference = model(**unmasked, output_attentions=True).attentions[0]
    torch.testing.assert_close(probs[1], reference[1])


@pytest.mark.parametrize("path", ["sdpa", "unpadded"])
def test_output_attentions_uses_the_eager_kernel_on_every_path(path):
    torch.manual_seed(0)
    model = BertModel(tiny_config(attn_implementation=path)).eval()
    batch = make_batch([6, 3], 8, 99)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
        plain = model(**batch)
    assert [p.shape for p in out.attentions] == [(2, 4, 8, 8)] * 2
    assert (out.attentions[1][1, :, :, 3:] == 0).all()
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(out.last_hidden_state[real], plain.last_hidden_state[real], atol=1e-5, rtol=0)


def test_the_boolean_mask_reaches_sdpa_as_given(monkeypatch):
    """SDPA gets the (B, 1, 1, T) key-padding mask as a bool tensor (True = attend), never a float mask."""
    seen = []
    original = F.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return original(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    model = BertModel(tiny_config(attn_implementation="sdpa")).eval()
    batch = make_batch([8, 5], 8, 99)
    with torch.no_grad():
        model(**batch)
    assert len(seen) == 2 and all(mask.dtype == torch.bool and mask.shape == (2, 1, 1, 8) for mask in seen)
    assert seen[0][1, 0, 0].tolist() == [True] * 5 + [False] * 3
    seen.clear()
    with torch.no_grad():
        model(input_ids=batch["input_ids"])  # no attention_mask at all: nothing is masked
    assert seen == [None, None]


def test_layouts():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    assert key_padding_mask(mask).tolist() == [[True] * 3 + [False], [True] * 2 + [False] * 2, [True] * 4]
    padded = padded_layout(mask, 3, 4)
    assert isinstance(padded, PaddedLayout) and padded.key_mask.shape == (3, 1, 1, 4)
    unpadded = unpadded_layout(mask, 3, 4, mask.device)
    assert isinstance(unpadded, UnpaddedLayout)
    # Real tokens in batch order; the fully padded row counts as 4 real tokens (finite, never read).
    assert unpadded.indices.tolist() == [0, 1, 2, 4, 5, 8, 9, 10, 11]
    assert unpadded.cu_seqlens.tolist() == [0, 3, 5, 9] and unpadded.max_seqlen == 4
    assert unpadded.cu_seqlens.dtype == torch.int32
    hidden = torch.arange(9.0).unsqueeze(1)  # (N, 1): row r holds r
    assert unpadded.gather(hidden, torch.tensor([[2, 0], [1, 3], [0, 0]])).squeeze(-1).tolist() == [
        [2, 0],
        [4, 0],
        [5, 5],
    ]
    assert unpadded.to_padded(hidden).squeeze(-1)[:2].tolist() == [[0, 1, 2, 0], [3, 4, 0, 0]]
    assert torch.equal(unpadded.select(unpadded.to_padded(hidden)), hidden)


def test_the_unpadded_layout_reads_the_device_once(monkeypatch):
    """One host read per batch (N and max_seqlen together), none per layer."""
    reads = []
    original = torch.Tensor.tolist

    def counting(self):
        reads.append(self.shape)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    model = BertModel(tiny_config(attn_implementation="unpadded", num_hidden_layers=3)).eval()
    with torch.no_grad():
        model(**make_batch([8, 5, 2], 8, 99))
    assert reads == [torch.Size([2])]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", PATHS)
def test_mlm_head_runs_only_at_masked_positions(path, variant):
    torch.manual_seed(0)
    model = as_variant(BertForPreTraining(tiny_config(attn_implementation=path)).eval(), variant)
    rows_seen = []
    model.cls.predictions.transform.register_forward_hook(
        lambda m, args, out: rows_seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    lengths = [16, 9]
    batch = make_batch(lengths, 16, 99)
    positions, _ = masked_positions(lengths, 3)
    with torch.no_grad():
        out = model(**batch, masked_lm_positions=positions)
        positions[1, 2] = 0  # an unused slot: position 0 pads the slots of a row with fewer masked tokens
        padded_slots = model(**batch, masked_lm_positions=positions)
        full = model(**batch)
    # The transform saw the B x P slots, never the B x T tokens; the fast head only the 5 used ones.
    assert rows_seen[:2] == ([6, 6] if variant == "reference" else [6, 5])
    assert rows_seen[2] == 32  # without masked_lm_positions: every position
    assert out.prediction_logits.shape == padded_slots.prediction_logits.shape == (2, 3, 99)
    torch.testing.assert_close(padded_slots.prediction_logits[0], out.prediction_logits[0])
    torch.testing.assert_close(padded_slots.prediction_logits[1, :2], out.prediction_logits[1, :2])
    assert (padded_slots.prediction_logits[1, 2] == 0).all()
    assert full.prediction_logits.shape == (2, 16, 99)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", PATHS)
def test_training_with_attention_dropout_ignores_padding(path, variant):
    """Train mode, attention dropout on: with the same seed, junk under the padding changes no real output
    and fully padded rows stay finite, in fp32 and bf16."""
    torch.manual_seed(0)
    config = tiny_config(attn_implementation=path, attention_probs_dropout_prob=0.3)
    model = as_variant(BertModel(config).train(), variant)
    batch = make_batch([9, 5, 0], 9, 99)
    junk = {k: v.clone() for k, v in batch.items()}
    junk["input_ids"][1, 5:] = torch.randint(5, 99, (4,))
    junk["token_type_ids"][1, 5:] = 1
    outs = []
    for inputs in (batch, junk):
        torch.manual_seed(1)
        outs.append(model(**inputs).last_hidden_state)
    real = batch["attention_mask"].bool()
    assert torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[1][real], outs[0][real], atol=1e-6, rtol=0)
    with torch.no_grad():
        evaluated = model.eval()(**batch).last_hidden_state
    assert (evaluated[real] - outs[0][real]).abs().max() > 1e-3  # dropout really acted in train mode
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model.train()(**batch).last_hidden_state).all()
