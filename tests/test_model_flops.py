"""Training FLOPs per token against a hand count, and MFU on CPU."""

from __future__ import annotations

import pytest

from bert.model.config import BertConfig
from bert.model.flops import encoder_matmul_params, mfu, training_flops_per_token


def test_flops_per_token_matches_a_hand_count():
    config = BertConfig(
        vocab_size=10, hidden_size=4, num_hidden_layers=2, num_attention_heads=2, intermediate_size=8
    )
    # Per layer: Q, K, V, output 4 * 4x4 = 64 weights, feed-forward 4x8 + 8x4 = 64 -> 128; two layers 256.
    assert encoder_matmul_params(config) == 256
    # The last layer's query and output projections (16 + 16) and feed-forward (64) are needed only at the
    # masked tokens and [CLS]: 0.5 + 1/4 of the tokens; so is its attention.
    dense = 6 * (256 - (16 + 16 + 64) * (1 - 0.75))
    attention = (1 + 0.75) * 3 * (2 * 4 * 4 + 2 * 4 * 4)  # layers x (fwd+bwd) x (QK^T + AV: 2 * T * H), T = 4
    mlm = 6 * (4 * 4 + 4 * 10) * 0.5  # transform + decoder, half the tokens masked
    pooler_nsp = 6 * (4 * 4 + 4 * 2) / 4  # once per sequence of 4 tokens
    assert training_flops_per_token(config, seq_len=4, masked_fraction=0.5) == pytest.approx(
        dense + attention + mlm + pooler_nsp
    )


def test_bert_base_is_about_six_times_85m_params():
    flops = training_flops_per_token(BertConfig(), seq_len=128)
    assert 6 * 85e6 < flops < 6 * 110e6


def test_mfu_is_none_on_cpu():
    assert mfu(1e12, "cpu") is None


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("Some Other GPU", None),
    ],
)
def test_peak_is_looked_up_per_gpu_model(monkeypatch, name, peak):
    import torch

    from bert.model.flops import peak_flops

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops("cuda", "bf16") == peak


def test_executed_flops_of_a_padded_batch_exceed_the_useful_ones():
    from bert.model.flops import executed_flops_per_sequence

    config = BertConfig()
    useful = training_flops_per_token(config, seq_len=96) * 96  # a sequence of 96 real tokens
    ours = executed_flops_per_sequence(config, seq_len=128, head_slots=20)  # padded to 128, 20 head slots
    theirs = executed_flops_per_sequence(config, seq_len=128, head_slots=128)  # transformers: head everywhere
    assert useful < ours < theirs
    assert 1.3 < ours / useful < 1.5  # 128 / 96 tokens, plus the last layer at every token
