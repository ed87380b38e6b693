"""The MLM cross-entropy with its gradient formed in the forward: one softmax, fewer passes over the logits.

The same value and gradient as `F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")`, in
fewer passes over the (R, V) logits, the largest activation of the step (152 x 30,522 for BERT-mini at
batch 8). torch's version writes log-probabilities, then in the backward fills a zero (R, V) gradient,
scatters into it and runs the log-softmax backward. Here the forward computes the softmax once and turns
it in place into the gradient, softmax - one_hot(label); the backward only scales it (0 for unlabelled
rows): about half the time (BENCHMARKS.md, "Figures moved out of the code"). The
log-sum-exp comes from the same softmax: the largest logit m has probability exp(0) / sum = 1 / sum, never
below 1 / V, so lse = m - log(p_max) cannot underflow.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from bert.batch import IGNORE_INDEX


class _CrossEntropySum(torch.autograd.Function):
    """Sum over labelled rows of -log softmax(logits)[label]: logits (R, V) fp32, labels (R,) -> scalar."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, need_grad: bool) -> torch.Tensor:
        labelled = labels != IGNORE_INDEX  # (R,)
        target = labels.clamp(min=0).unsqueeze(1)  # (R, 1)
        probs = torch.softmax(logits, dim=-1)  # (R, V)
        lse = logits.amax(-1) - probs.amax(-1).log()  # (R,)
        row_loss = lse - logits.gather(1, target).squeeze(1)  # (R,)
        total = torch.where(labelled, row_loss, row_loss.new_zeros(())).sum()
        if need_grad:
            grad = probs.scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))  # in place
            ctx.save_for_backward(grad, labelled)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad, labelled = ctx.saved_tensors  # (R, V) softmax - one_hot, (R,)
        scale = labelled.to(grad.dtype) * grad_total  # (R,): unlabelled rows get no gradient
        return grad * scale.unsqueeze(1), None, None


def fused_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies of (R, V) fp32 logits against (R,) labels, rows labelled -100 left out."""
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    return _CrossEntropySum.apply(logits, labels, need_grad)
