"""bert.model.fast against the reference model: each speedup alone and all together, values and gradients;
then each fast kernel on its own (buckets, queries at some rows, cheap dropout, vocabulary slices, the
fused cross-entropy), and the seam itself (what `select` turns on, what `enable` swaps and keeps)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import bert.model.fast.attention as fast_attention
import bert.model.fast.mlm as fast_mlm
from bert.batch import PretrainingBatch
from bert.losses import pretraining_loss
from bert.model import fast
from bert.model.fast.attention import (
    bucketed_attention,
    bucketed_attention_at_rows,
    bucketed_layout,
    length_buckets,
)
from bert.model.fast.cross_entropy import fused_cross_entropy_sum
from bert.model.fast.dropout import CheapDropout
from bert.model.modeling import BertForPreTraining, BertForSequenceClassification, BertModel
from tests.model_helpers import make_batch, masked_positions, tiny_config

FLAGS = [f.name for f in dataclasses.fields(fast.FastPaths)]


def _batch(lengths: list[int], seq_len: int = 16, slots: int = 4, seed: int = 0) -> PretrainingBatch:
    inputs = make_batch(lengths, seq_len, 99, seed)
    positions, used = masked_positions(lengths, slots, seed)
    labels = torch.where(
        used, torch.randint(5, 99, used.shape, generator=torch.Generator().manual_seed(seed)), -100
    )
    return PretrainingBatch(
        **inputs,
        masked_lm_positions=positions,
        masked_lm_labels=labels,
        next_sentence_label=torch.tensor([i % 2 for i in range(len(lengths))]),
    )


def _step(model, batch: PretrainingBatch, paths: fast.FastPaths) -> tuple[dict, dict]:
    out = model(**batch.model_inputs())
    losses = pretraining_loss(out, batch, cross_entropy=paths.cross_entropy())
    losses.loss.backward()
    values = {"logits": out.prediction_logits, "nsp": out.seq_relationship_logits, "loss": losses.loss}
    return values, {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("flag", [*FLAGS, "all"])
@pytest.mark.parametrize("path", ["sdpa", "unpadded"])
@pytest.mark.parametrize("pre_ln", [False, True])
def test_each_speedup_gives_the_reference_values_and_gradients(flag, path, pre_ln):
    torch.manual_seed(0)
    reference = BertForPreTraining(tiny_config(attn_implementation=path, pre_layer_norm=pre_ln)).train()
    paths = fast.FastPaths.all() if flag == "all" else fast.FastPaths(**{flag: True})
    model = fast.enable(copy.deepcopy(reference), paths)
    batch = _batch([16, 11, 4, 0, 9])  # ragged, a fully padded row, rows with unused slots
    ours, ours_grads = _step(model, batch, paths)
    expected, expected_grads = _step(reference, batch, fast.FastPaths.none())
    torch.testing.assert_close(ours["logits"], expected["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["nsp"], expected["nsp"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["loss"], expected["loss"], atol=1e-6, rtol=1e-6)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_the_classifier_with_every_speedup_equals_the_reference():
    torch.manual_seed(0)
    reference = BertForSequenceClassification(
        tiny_config(attn_implementation="unpadded", num_labels=3)
    ).train()
    model = fast.enable(copy.deepcopy(reference), fast.FastPaths.all())
    batch = make_batch([16, 3, 9], 16, 99)
    labels = torch.tensor([0, 2, 1])
    grads = []
    for m in (model, reference):
        logits = m(**batch).logits
        F.cross_entropy(logits, labels).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, atol=1e-5, rtol=0)
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("path", ["sdpa", "unpadded"])
def test_the_last_layer_computes_only_the_tokens_the_heads_read(path):
    """Padded (head_rows alone, as on CUDA) and bucketed (with the bucketed layout, as on the CPU)."""
    torch.manual_seed(0)
    paths = fast.FastPaths(head_rows=True) if path == "sdpa" else fast.FastPaths.all()
    model = fast.enable(BertForPreTraining(tiny_config(attn_implementation=path)).eval(), paths)
    rows_seen = []  # tokens entering each layer's feed-forward
    for layer in model.bert.encoder.layer:
        layer.intermediate.dense.register_forward_hook(
            lambda m, args, out: rows_seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
        )
    lengths = [16, 9, 4]
    batch = _batch(lengths)  # row 2: 3 masked tokens and one unused slot (position 0)
    with torch.no_grad():
        model(**batch.model_inputs())
    every_token = 48 if path == "sdpa" else sum(lengths)
    # Padded: a static (B, 1 + P) block, unused slots repeating [CLS]; unpadded: each token once.
    kept = 3 * (1 + 4) if path == "sdpa" else 3 + 4 + 4 + 3
    assert rows_seen == [every_token, kept]


def test_the_padded_head_rows_path_reads_nothing_back(monkeypatch):
    """The padded variant of the last-layer speedup has static shapes: no tolist, item or nonzero."""
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(attn_implementation="sdpa")).eval()
    fast.enable(model, fast.FastPaths(head_rows=True))
    batch = _batch([16, 9, 4])
    calls = []
    for name in ("tolist", "item", "nonzero", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor,
            name,
            lambda self, *a, _o=original, _n=name, **k: calls.append(_n) or _o(self, *a, **k),
        )
    with torch.no_grad():
        model(**batch.model_inputs())
    assert calls == []


def test_the_cpu_layout_is_bucketed_whatever_path_is_configured():
    torch.manual_seed(0)
    model = fast.enable(BertModel(tiny_config(attn_implementation="sdpa")).eval(), fast.FastPaths.all())
    batch = make_batch([8, 3], 8, 99)
    layout = model.masks(batch["attention_mask"], 2, 8, torch.device("cpu"))
    assert type(layout).__name__ == "BucketedLayout" and layout.indices.numel() == 11
    with torch.no_grad():  # attention probabilities still come from the padded eager kernel
        assert len(model(**batch, output_attentions=True).attentions) == 2


def test_enable_keeps_parameters_names_and_tying():
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(attn_implementation="unpadded"))
    before = {name: p for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    fast.enable(model, fast.FastPaths.all())
    assert list(model.state_dict()) == keys
    assert all(p is before[name] for name, p in model.named_parameters())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"HeadRowsEncoder", "FastAttention", "BucketedMasks", "CheapDropout", "FastDecoder"} <= kinds
    assert {"TiedWordEmbedding", "FastLMPredictionHead"} <= kinds
    assert "Dropout" not in kinds and "BertEncoder" not in kinds


def test_select_decides_by_device_mode_and_compile():
    assert fast.select("cpu") == fast.FastPaths.all()
    assert fast.select("cuda") == fast.FastPaths.none()  # not measured on a GPU yet
    assert fast.select("cpu", compile=True) == fast.FastPaths.none()
    assert fast.select("cpu", "off") == fast.FastPaths.none()
    assert fast.select("cuda", "on") == fast.FastPaths.all()
    assert fast.FastPaths.none().cross_entropy() is None


# ------------------------------------------------------------------------------------- length buckets


def test_bucketed_layout_stores_sequences_longest_first_in_length_buckets():
    lengths = [3, 8, 0, 5, 8, 1]
    mask = make_batch(lengths, 8, 99)["attention_mask"]
    layout = bucketed_layout(mask, 6, 8, mask.device)
    stored = [8, 8, 8, 5, 3, 1]  # the fully padded row counts as 8 real tokens (finite, ignored)
    assert layout.cu_seqlens.tolist() == [0, 8, 16, 24, 29, 32, 33] and layout.max_seqlen == 8
    assert layout.buckets[0].seq_len == 8
    assert layout.buckets[0].start == 0 and layout.buckets[-1].end == sum(stored)
    assert sum(b.num_seqs for b in layout.buckets) == 6
    # Every real token is stored exactly once, and flat_to_row inverts indices.
    assert sorted(layout.indices.tolist()) == sorted(set(layout.indices.tolist()))
    assert (layout.flat_to_row[layout.indices] == torch.arange(33)).all()


def test_length_buckets_trade_padding_against_calls(monkeypatch):
    monkeypatch.setattr(fast_attention, "BUCKET_COST_PAIRS", 100)
    assert length_buckets([128, 128, 20, 20]) == [(0, 2), (2, 4)]
    assert length_buckets([10, 10, 10]) == [(0, 3)]
    monkeypatch.setattr(fast_attention, "BUCKET_COST_PAIRS", 10**9)
    assert length_buckets([128, 64, 20, 5]) == [(0, 4)]


@pytest.mark.parametrize("bucket_cost", [16000, 1])
def test_bucketed_attention_equals_the_reference_kernel(bucket_cost, monkeypatch):
    from bert.model.attention import varlen_attention

    monkeypatch.setattr(fast_attention, "BUCKET_COST_PAIRS", bucket_cost)  # 1: a bucket per length
    lengths = [7, 3, 0, 7, 5, 1]
    mask = make_batch(lengths, 7, 99)["attention_mask"]
    layout = bucketed_layout(mask, 6, 7, mask.device)
    assert len(layout.buckets) == (1 if bucket_cost == 16000 else 4)
    torch.manual_seed(0)
    q, k, v = (torch.randn(layout.indices.numel(), 2, 4) for _ in range(3))  # (N, A, D)
    torch.testing.assert_close(
        bucketed_attention(q, k, v, layout, 0.0), varlen_attention(q, k, v, layout, 0.0), atol=1e-6, rtol=0
    )
    # Queries at some rows only: with a bucket per length, the buckets of lengths 5 (rows 21-25) and 1
    # (row 29) get no query.
    full = bucketed_attention(q, k, v, layout, 0.0)
    rows = torch.tensor([0, 2, 3, 9, 10, 15, 20, 27])
    picked = bucketed_attention_at_rows(q[rows], k, v, layout, rows, 0.0)  # (M, A, D)
    torch.testing.assert_close(picked, full[rows], atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", ["sdpa", "unpadded"])
def test_sdpa_never_draws_attention_dropout_on_the_fast_path(path, monkeypatch):
    """SDPA's CPU dropout (math path, bernoulli_) is slow: in training the fast kernel draws the cheap mask
    itself and hands SDPA dropout_p = 0, or does not call it."""
    from bert.model import attention

    seen = []
    original = F.scaled_dot_product_attention

    def spy(*args, dropout_p=0.0, **kwargs):
        seen.append(dropout_p)
        return original(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    model = BertForPreTraining(tiny_config(attn_implementation=path, attention_probs_dropout_prob=0.1))
    fast.enable(model.train(), fast.FastPaths.all())
    batch = _batch([8, 5], seq_len=8, slots=2)
    pretraining_loss(model(**batch.model_inputs()), batch).loss.backward()
    assert all(p == 0.0 for p in seen)


# ------------------------------------------------------------------------------------------ cheap dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cheap_dropout_rate_and_scale(p):
    torch.manual_seed(0)
    drop = CheapDropout(p).train()
    x = torch.ones(1000, 401)  # an element count that is not a multiple of 4
    y = drop(x)
    dropped = y == 0
    keep_probability = 1 - round(p * 65536) / 65536
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.003)  # 401k draws: sd ~0.0005
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 1 / keep_probability))
    # Every one of the four 16-bit lanes of a 64-bit draw is uniform (a zero top bit would keep lane 3 always).
    lanes = dropped.flatten()[: 4 * (x.numel() // 4)].view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), p), atol=0.006)


def test_cheap_dropout_expectation_is_the_input():
    torch.manual_seed(1)
    x = torch.randn(64)
    mean = torch.stack([CheapDropout(0.1).train()(x) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, x, atol=0.05)


def test_cheap_dropout_eval_mode_and_p_zero_are_identity():
    x = torch.randn(8, 16)
    assert torch.equal(CheapDropout(0.1).eval()(x), x)
    assert torch.equal(CheapDropout(0.0).train()(x), x)


def test_cheap_dropout_is_seeded_and_its_gradient_follows_the_mask():
    x = torch.randn(32, 48, requires_grad=True)
    torch.manual_seed(7)
    y1 = CheapDropout(0.2).train()(x)
    torch.manual_seed(7)
    y2 = CheapDropout(0.2).train()(x)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    scale = 65536 / (65536 - round(0.2 * 65536))
    expected = torch.where(y1 != 0, torch.tensor(scale), torch.tensor(0.0))
    assert torch.allclose(x.grad, expected)


# --------------------------------------------------------------------------------------- the MLM decoder


def _decoder(sliced: bool) -> fast_mlm.FastDecoder:
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 99)
    layer.__class__ = fast_mlm.FastDecoder
    layer.sliced = sliced
    return layer


def test_sliced_projection_equals_linear_forward_and_backward(monkeypatch):
    monkeypatch.setattr(fast_mlm, "SLICE_ROWS", 16)  # 99 = 6 slices of 16 + one of 3
    layer = _decoder(sliced=True)
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


def test_sliced_projection_falls_back_to_linear_under_autocast(monkeypatch):
    calls = []
    monkeypatch.setattr(fast_mlm._SlicedLinear, "apply", lambda *a: calls.append(1))
    layer = _decoder(sliced=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(3, 32))
    assert out.dtype == torch.bfloat16 and not calls


def test_every_speedup_in_bf16_keeps_the_references_loss_and_gradients():
    torch.manual_seed(0)
    reference = BertForPreTraining(tiny_config(attn_implementation="unpadded")).eval()  # no dropout draws
    model = fast.enable(copy.deepcopy(reference), fast.FastPaths.all())
    batch = _batch([16, 11, 4, 0, 9])
    results = []
    for m, paths in ((model, fast.FastPaths.all()), (reference, fast.FastPaths.none())):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_step(m, batch, paths))
    (ours, ours_grads), (expected, expected_grads) = results
    torch.testing.assert_close(ours["loss"], expected["loss"], atol=0, rtol=2e-2)
    for name, grad in expected_grads.items():  # bf16 rounding of different kernels, relative to the largest
        assert (ours_grads[name] - grad).abs().max() <= 5e-2 * grad.abs().max() + 1e-6, name


def test_tied_lookup_alias_is_used_once_and_not_in_eval():
    torch.manual_seed(0)
    model = fast.enable(BertForPreTraining(tiny_config()), fast.FastPaths(tied_embedding_grad=True))
    route = model.cls.predictions.decoder.route
    batch = _batch([8, 5], seq_len=8, slots=2)
    model.train()(**batch.model_inputs())
    assert route.alias is None  # made by the lookup, consumed by the decoder of the same forward
    with torch.no_grad():
        model.bert.embeddings.word_embeddings(batch.input_ids)
    assert route.alias is None  # no alias without gradients


# --------------------------------------------------------------------------------- fused cross-entropy


def test_fused_cross_entropy_equals_torch_in_value_and_gradient():
    logits = (torch.randn(6, 40) * 4).requires_grad_()
    labels = torch.tensor([3, -100, 0, 39, -100, 7])
    ours = fused_cross_entropy_sum(logits, labels)
    (grad_ours,) = torch.autograd.grad(ours * 0.25, logits)
    theirs = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    (grad_theirs,) = torch.autograd.grad(theirs * 0.25, logits)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)
    assert (grad_ours[[1, 4]] == 0).all()  # unlabelled rows get no gradient


def test_fused_cross_entropy_does_not_underflow_on_confidently_wrong_logits():
    logits = torch.zeros(2, 5)
    logits[:, 0] = 200.0  # the label's probability is exp(-200): 0 in fp32
    labels = torch.tensor([1, 0])
    torch.testing.assert_close(fused_cross_entropy_sum(logits, labels), torch.tensor(200.0 + 0.0))


def test_fused_cross_entropy_backward_twice_and_without_grad():
    logits = torch.randn(3, 9, requires_grad=True)
    labels = torch.tensor([1, 2, -100])
    loss = fused_cross_entropy_sum(logits, labels)
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(first, second)  # the saved gradient is not consumed in place
    with torch.no_grad():
        assert fused_cross_entropy_sum(logits, labels).grad_fn is None
    with pytest.raises(RuntimeError):  # no silent wrong answer for a second derivative
        (grad,) = torch.autograd.grad(fused_cross_entropy_sum(logits, labels), logits, create_graph=True)
        grad.sum().backward()
