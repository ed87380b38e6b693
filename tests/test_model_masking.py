"""Mask rules: padding never moves real outputs, paths agree, no NaN in low precision, no mask when unpadded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bert.model.attention as attention
from bert.model.masking import PaddedLayout, UnpaddedLayout, build_layout
from bert.model.modeling import BertForPreTraining, BertForSequenceClassification, BertModel
from tests.model_helpers import make_batch, masked_positions, tiny_config

PATHS = ["eager", "sdpa", "unpadded"]


def _shared_weights(config_kwargs: dict, paths=PATHS) -> dict[str, BertModel]:
    torch.manual_seed(0)
    first = BertModel(tiny_config(attn_implementation=paths[0], **config_kwargs)).eval()
    models = {paths[0]: first}
    for path in paths[1:]:
        model = BertModel(tiny_config(attn_implementation=path, **config_kwargs)).eval()
        model.load_state_dict(first.state_dict())
        models[path] = model
    return models


@pytest.mark.parametrize("pre_ln", [False, True])
def test_all_paths_agree_in_fp32(pre_ln):
    models = _shared_weights({"pre_layer_norm": pre_ln})
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


@pytest.mark.parametrize("pre_ln", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_padding_never_changes_real_outputs(path, pre_ln):
    torch.manual_seed(0)
    model = BertModel(tiny_config(attn_implementation=path, pre_layer_norm=pre_ln)).eval()
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


def test_unpadded_pretraining_equals_padded_with_dropout_off():
    torch.manual_seed(0)
    padded = BertForPreTraining(tiny_config(attn_implementation="sdpa")).eval()
    unpadded = BertForPreTraining(tiny_config(attn_implementation="unpadded")).eval()
    unpadded.load_state_dict(padded.state_dict())
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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", PATHS)
def test_low_precision_with_fully_padded_rows_has_no_nan(path, dtype):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(attn_implementation=path)).eval()
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


def test_eager_probabilities_ignore_padding_and_fully_padded_rows_attend_everywhere():
    torch.manual_seed(0)
    model = BertModel(tiny_config(attn_implementation="eager")).eval()
    batch = make_batch([6, 0], 8, 99)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
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
def test_no_mask_reaches_sdpa_when_nothing_is_padded(path, monkeypatch):
    seen = []
    original = F.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return original(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    model = BertModel(tiny_config(attn_implementation=path)).eval()
    with torch.no_grad():
        model(**make_batch([8, 8], 8, 99))
        assert seen and all(mask is None for mask in seen)
        seen.clear()
        model(**make_batch([8, 5], 8, 99))
        assert seen and all(mask is not None for mask in seen)


def test_layouts_by_path():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert build_layout(None, 2, 4, "unpadded", mask.device).key_mask is None
    assert build_layout(torch.ones_like(mask), 2, 4, "sdpa", mask.device).key_mask is None
    padded = build_layout(mask, 2, 4, "sdpa", mask.device)
    assert isinstance(padded, PaddedLayout) and padded.key_mask.shape == (2, 1, 1, 4)
    unpadded = build_layout(mask, 2, 4, "unpadded", mask.device)
    assert isinstance(unpadded, UnpaddedLayout)
    assert unpadded.indices.tolist() == [0, 1, 2, 4, 5]
    assert unpadded.cu_seqlens.tolist() == [0, 3, 5] and unpadded.max_seqlen == 3
    hidden = torch.arange(5.0).unsqueeze(1)  # (N, 1): row r holds r
    assert unpadded.gather(hidden, torch.tensor([[2, 0], [1, 3]])).squeeze(-1).tolist() == [[2, 0], [4, 0]]
    assert unpadded.to_padded(hidden).squeeze(-1).tolist() == [[0, 1, 2, 0], [3, 4, 0, 0]]


@pytest.mark.parametrize("path", PATHS)
def test_mlm_head_runs_only_at_masked_positions(path):
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(attn_implementation=path)).eval()
    rows_seen = []
    model.cls.predictions.transform.register_forward_hook(
        lambda m, args, out: rows_seen.append(args[0].shape)
    )
    lengths = [16, 9]
    batch = make_batch(lengths, 16, 99)
    positions, _ = masked_positions(lengths, 3)
    with torch.no_grad():
        out = model(**batch, masked_lm_positions=positions)
        positions[1, 2] = 0  # an unused slot: position 0 pads the slots of a row with fewer masked tokens
        padded_slots = model(**batch, masked_lm_positions=positions)
        full = model(**batch)
    assert rows_seen[0] == (2, 3, 32)  # the transform saw (B, P, H), never (B, T, H)
    assert rows_seen[1] == (5, 32)  # the 5 used slots only
    assert out.prediction_logits.shape == padded_slots.prediction_logits.shape == (2, 3, 99)
    torch.testing.assert_close(padded_slots.prediction_logits[0], out.prediction_logits[0])
    torch.testing.assert_close(padded_slots.prediction_logits[1, :2], out.prediction_logits[1, :2])
    assert (padded_slots.prediction_logits[1, 2] == 0).all()
    assert full.prediction_logits.shape == (2, 16, 99)


@pytest.mark.parametrize("pre_ln", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_last_layer_computes_only_the_tokens_the_heads_read(path, pre_ln):
    torch.manual_seed(0)
    config = tiny_config(attn_implementation=path, pre_layer_norm=pre_ln)
    model = BertForPreTraining(config).eval()
    rows_seen = []  # tokens entering each layer's feed-forward
    for layer in model.bert.encoder.layer:
        layer.intermediate.dense.register_forward_hook(
            lambda m, args, out: rows_seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
        )
    lengths = [16, 9, 4]
    batch = make_batch(lengths, 16, 99)
    positions, used = masked_positions(lengths, 4)  # row 2: 3 masked tokens and one unused slot (position 0)
    with torch.no_grad():
        out = model(**batch, masked_lm_positions=positions)
        rows_seen_heads, rows_seen[:] = list(rows_seen), []
        full = model.bert(**batch).last_hidden_state  # (B, T, H): every token through every layer
    every_token = 48 if path != "unpadded" else sum(lengths)
    assert rows_seen_heads == [every_token, 3 + 4 + 4 + 3]  # the last layer: 3 [CLS] + 11 masked tokens
    assert rows_seen == [every_token, every_token]
    with torch.no_grad():
        picked = full[torch.arange(3).unsqueeze(1), positions]  # (B, P, H)
        logits = torch.where(used.unsqueeze(-1), model.cls.predictions(picked), 0.0)  # unused slots: 0
        nsp = model.cls.seq_relationship(model.bert.pooler(full[:, 0]))
    torch.testing.assert_close(out.prediction_logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.seq_relationship_logits, nsp, atol=1e-5, rtol=0)
    # Classification reads [CLS] only: the last layer's feed-forward sees one token a sequence.
    classifier = BertForSequenceClassification(config).eval()
    classifier.bert.load_state_dict(model.bert.state_dict())
    rows_seen.clear()
    classifier.bert.encoder.layer[-1].intermediate.dense.register_forward_hook(
        lambda m, args, out: rows_seen.append(args[0].shape[0])
    )
    with torch.no_grad():
        logits = classifier(**batch).logits
        expected = classifier.classifier(classifier.bert(**batch).pooler_output)
    assert rows_seen[0] == 3
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bucket_cost", [16000, 1])
def test_attention_at_some_queries_equals_full_attention_at_those_rows(bucket_cost, monkeypatch):
    import bert.model.masking as masking

    monkeypatch.setattr(masking, "BUCKET_COST_PAIRS", bucket_cost)  # 1: a bucket per distinct length
    lengths = [7, 3, 0, 7, 5, 1]  # a fully padded row (attends everywhere) and equal lengths
    mask = make_batch(lengths, 7, 99)["attention_mask"]
    layout = build_layout(mask, 6, 7, "unpadded", torch.device("cpu"))
    assert len(layout.buckets) == (1 if bucket_cost == 16000 else 4)
    torch.manual_seed(0)
    n = layout.indices.numel()
    qkv = torch.randn(n, 3, 2, 4)  # (N, 3, A, D)
    off = attention.Dropout(0.0)
    full = attention.varlen_attention(qkv, layout, off)  # (N, A, D)
    # With a bucket per length, the buckets of lengths 5 (rows 21-25) and 1 (row 29) get no query.
    rows = torch.tensor([0, 2, 3, 9, 10, 15, 20, 27])
    assert 0 < rows.numel() < n
    picked = attention.varlen_attention_at_rows(qkv[rows, 0], qkv[:, 1:], layout, rows, off)  # (M, A, D)
    torch.testing.assert_close(picked, full[rows], atol=1e-6, rtol=0)


def test_unpadded_layout_stores_sequences_longest_first_in_length_buckets():
    lengths = [3, 8, 0, 5, 8, 1]
    batch = make_batch(lengths, 8, 99)
    layout = build_layout(batch["attention_mask"], 6, 8, "unpadded", torch.device("cpu"))
    stored = [8, 8, 8, 5, 3, 1]  # the fully padded row counts as 8 real tokens (finite, ignored)
    assert layout.cu_seqlens.tolist() == [0, 8, 16, 24, 29, 32, 33] and layout.max_seqlen == 8
    assert [b.seq_len for b in layout.buckets][0] == 8
    assert layout.buckets[0].start == 0 and layout.buckets[-1].end == sum(stored)
    assert sum(b.num_seqs for b in layout.buckets) == 6
    # Every real token is stored exactly once, and flat_to_row inverts indices.
    assert sorted(layout.indices.tolist()) == sorted(set(layout.indices.tolist()))
    assert (layout.flat_to_row[layout.indices] == torch.arange(33)).all()


def test_length_buckets_trade_padding_against_calls(monkeypatch):
    import bert.model.masking as masking

    monkeypatch.setattr(masking, "BUCKET_COST_PAIRS", 100)
    assert masking.length_buckets([128, 128, 20, 20]) == [(0, 2), (2, 4)]
    assert masking.length_buckets([10, 10, 10]) == [(0, 3)]
    monkeypatch.setattr(masking, "BUCKET_COST_PAIRS", 10**9)
    assert masking.length_buckets([128, 64, 20, 5]) == [(0, 4)]


def test_unpadded_with_many_buckets_matches_sdpa_under_dropout_off(monkeypatch):
    import bert.model.masking as masking

    monkeypatch.setattr(masking, "BUCKET_COST_PAIRS", 1)  # one bucket per distinct length
    models = _shared_weights({}, paths=["sdpa", "unpadded"])
    batch = make_batch([5, 12, 3, 12, 9, 1], 12, 99)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        a, b = models["sdpa"](**batch), models["unpadded"](**batch)
    torch.testing.assert_close(b.last_hidden_state[real], a.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.pooler_output, a.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_training_with_attention_dropout_ignores_padding(path):
    """Train mode, attention dropout on (the CPU's eager kernel with the cheap mask): with the same seed, junk
    under the padding changes no real output and fully padded rows stay finite, in fp32 and bf16."""
    torch.manual_seed(0)
    model = BertModel(tiny_config(attn_implementation=path, attention_probs_dropout_prob=0.3)).train()
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


@pytest.mark.parametrize("path", ["sdpa", "unpadded"])
def test_sdpa_never_draws_attention_dropout_on_the_cpu(path, monkeypatch):
    """SDPA's CPU dropout (math path, bernoulli_) is slow: training hands it dropout_p = 0 or is not called."""
    seen = []
    original = F.scaled_dot_product_attention

    def spy(*args, dropout_p=0.0, **kwargs):
        seen.append(dropout_p)
        return original(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    model = BertModel(tiny_config(attn_implementation=path, attention_probs_dropout_prob=0.1)).train()
    model(**make_batch([8, 5], 8, 99)).last_hidden_state.sum().backward()
    assert all(p == 0.0 for p in seen)
    with torch.no_grad():
        model.eval()(**make_batch([8, 5], 8, 99))
    assert seen and all(p == 0.0 for p in seen)  # eval: SDPA's fused kernel, no dropout
