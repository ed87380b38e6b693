"""The fast paths: drop-in replacements for modules of the reference model, switched on at this one seam.

The reference model (bert/model/*.py) is plain BERT. Each speedup here replaces a reference module in place
by a subclass with the same interface and the same parameters (state dicts, checkpoints and Hugging Face
names are unchanged), or, for the loss, replaces a function. Every one computes what the reference computes
(tests/test_model_fast.py checks values and gradients against it):

| flag                  | replaces                                  | file             |
|-----------------------|-------------------------------------------|------------------|
| bucketed_attention    | layout + kernel: real tokens, length      | attention.py     |
|                       | buckets (whatever path is configured)     |                  |
| cheap_dropout         | nn.Dropout and attention dropout masks    | dropout.py       |
| head_rows             | BertEncoder: last layer at heads' tokens  | encoder.py       |
| mlm_used_slots        | BertLMPredictionHead: used slots only     | mlm.py           |
| sliced_decoder        | MLM decoder over vocabulary slices        | mlm.py           |
| tied_embedding_grad   | one gradient edge into tied embeddings    | mlm.py           |
| fused_cross_entropy   | the MLM loss's cross-entropy              | cross_entropy.py |

Where they apply is decided in `select` and nowhere else: all of them on the CPU, where each was measured
(BENCHMARKS.md); none on CUDA until measured there (scripts/gpu_check.sh times both), and none under
torch.compile, which they would break into pieces (several read lengths back to the host). Training and
`bert bench` call `select` and then `enable(model, paths)` before building the optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

FastPathsMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class FastPaths:
    """Which speedups are on (the table of the module docstring)."""

    bucketed_attention: bool = False
    cheap_dropout: bool = False
    head_rows: bool = False
    mlm_used_slots: bool = False
    sliced_decoder: bool = False
    tied_embedding_grad: bool = False
    fused_cross_entropy: bool = False

    @classmethod
    def all(cls) -> FastPaths:
        return cls(**{f.name: True for f in dataclasses.fields(cls)})

    @classmethod
    def none(cls) -> FastPaths:
        return cls()

    def names(self) -> list[str]:
        """The flags that are on."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]

    def attention(self, configured: str) -> str:
        """The attention that runs for `model.attn_implementation=configured`: the bucketed fast path
        replaces the padded kernels on the CPU (the same outputs at real tokens, padding never computed)."""
        if self.bucketed_attention and configured != "eager":
            return "unpadded, bucketed by length (CPU fast path)"
        return configured

    def pretraining_loss(self) -> Callable[..., Any]:
        """`bert.losses.pretraining_loss` with the MLM cross-entropy these paths choose, bound once here: the
        loop and the bench call the result and never pick a kernel themselves."""
        from bert.losses import pretraining_loss

        cross_entropy = self.cross_entropy()
        if cross_entropy is None:
            return pretraining_loss
        return functools.partial(pretraining_loss, cross_entropy=cross_entropy)

    def cross_entropy(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The summed cross-entropy for the MLM loss (None: the reference, F.cross_entropy)."""
        if not self.fused_cross_entropy:
            return None
        from bert.model.fast.cross_entropy import fused_cross_entropy_sum

        return fused_cross_entropy_sum


def select(device: torch.device | str, mode: FastPathsMode = "auto", compile: bool = False) -> FastPaths:
    """The one place that decides which speedups run: 'on' all, 'off' none, 'auto' as the module says."""
    if mode == "off" or compile:  # the config refuses 'on' with compile: compile traces the reference model
        return FastPaths.none()
    if mode == "on":
        return FastPaths.all()
    return FastPaths.all() if torch.device(device).type == "cpu" else FastPaths.none()


def enable(model: nn.Module, paths: FastPaths) -> nn.Module:
    """Swap the fast modules of `paths` into `model` in place (before the optimizer is built); returns it."""
    from bert.model.attention import ScaledDotProductAttention
    from bert.model.fast.attention import BucketedMasks, FastAttention
    from bert.model.fast.dropout import CheapDropout
    from bert.model.fast.encoder import HeadRowsEncoder
    from bert.model.fast.mlm import FastDecoder, FastLMPredictionHead, TiedRoute, TiedWordEmbedding
    from bert.model.heads import BertLMPredictionHead
    from bert.model.layers import BertEncoder
    from bert.model.masks import AttentionMasks

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if paths.cheap_dropout and type(child) is nn.Dropout:
                setattr(parent, name, CheapDropout(child.p, child.inplace).train(child.training))
            elif (paths.bucketed_attention or paths.cheap_dropout) and type(
                child
            ) is ScaledDotProductAttention:
                setattr(parent, name, FastAttention.replacing(child, paths.cheap_dropout))
            elif paths.bucketed_attention and type(child) is AttentionMasks:
                setattr(parent, name, BucketedMasks(child.implementation))
            elif paths.head_rows and type(child) is BertEncoder:
                child.__class__ = HeadRowsEncoder  # the same children: only forward changes
            elif paths.mlm_used_slots and type(child) is BertLMPredictionHead:
                child.__class__ = FastLMPredictionHead

    if paths.sliced_decoder or paths.tied_embedding_grad:
        embeddings = {id(m.weight): m for m in model.modules() if type(m) is nn.Embedding}
        for head in [m for m in model.modules() if isinstance(m, BertLMPredictionHead)]:
            decoder = head.decoder
            decoder.__class__ = FastDecoder
            decoder.sliced = paths.sliced_decoder
            word = embeddings.get(id(decoder.weight))
            if paths.tied_embedding_grad and word is not None:
                word.__class__ = TiedWordEmbedding
                word.route = decoder.route = TiedRoute()
    return model
