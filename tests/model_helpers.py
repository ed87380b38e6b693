"""Shared helpers of the model tests: tiny configs, a Hugging Face twin with copied weights, batches, and the
two variants of our model (the reference, and with every fast path of bert.model.fast)."""

from __future__ import annotations

import dataclasses

import torch
import transformers

from bert.model import fast
from bert.model.config import BertConfig

HF_ONLY = {"attn_implementation", "pre_layer_norm", "architectures"}
VARIANTS = ["reference", "fast"]
"""`variant` parameter of the tests that must hold for the plain model and for the fast paths alike."""


def as_variant(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    """The model itself ('reference') or with every fast path swapped in ('fast'); the same weights."""
    return fast.enable(model, fast.FastPaths.all()) if variant == "fast" else model


def cross_entropy_of(variant: str):
    """The MLM loss's summed cross-entropy of the variant (None: the reference)."""
    return fast.FastPaths.all().cross_entropy() if variant == "fast" else None


def tiny_config(**overrides) -> BertConfig:
    base = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertConfig(**{**base, **overrides})


def hf_config(config: BertConfig, attn: str = "eager") -> transformers.BertConfig:
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in HF_ONLY}
    return transformers.BertConfig(**fields, attn_implementation=attn)


def hf_twin(model: torch.nn.Module, hf_class=transformers.BertForPreTraining, attn: str = "eager"):
    """A transformers model of the same class name with our weights copied in (identical key names)."""
    ref = hf_class(hf_config(model.config, attn))
    missing, unexpected = ref.load_state_dict(model.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref.train(model.training)


def make_batch(lengths: list[int], seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: row b has lengths[b] real tokens ([CLS]=2 ... [SEP]=3), two segments."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    input_ids = torch.randint(5, vocab_size, (b, seq_len), generator=g)
    token_type_ids = torch.zeros(b, seq_len, dtype=torch.long)
    attention_mask = torch.zeros(b, seq_len, dtype=torch.long)
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
        token_type_ids[row, n // 2 : n] = 1
        input_ids[row, n:] = 0
        if n:
            input_ids[row, 0] = 2
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def masked_positions(lengths: list[int], per_row: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) positions inside each row's real tokens (not 0) and a (B, P) used-slot mask; unused slots 0."""
    g = torch.Generator().manual_seed(seed)
    positions = torch.zeros(len(lengths), per_row, dtype=torch.long)
    used = torch.zeros(len(lengths), per_row, dtype=torch.bool)
    for row, n in enumerate(lengths):
        k = min(per_row, max(n - 1, 0))
        if k:
            positions[row, :k] = 1 + torch.randperm(n - 1, generator=g)[:k]
            used[row, :k] = True
    return positions, used
