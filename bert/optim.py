"""Optimisers and learning-rate schedules for pretraining and fine-tuning.

This file owns:
- `param_groups`: two groups, with and without weight decay (never on biases and LayerNorm weights);
- `Lamb`: layer-wise adaptive moments (You et al., 2019), written out below;
- `lr_multiplier` / `Schedule`: linear warmup, then linear, polynomial, constant or warmup-stable-decay;
- `build_optimizer`: AdamW or LAMB from an `OptimizerConfig`; `apply_hyperparameters` re-applies the
  config's betas, eps and weight decay (after an optimizer state was loaded on resume).

The learning rate is a pure function of the optimizer step (`Schedule.lr`), set on the param groups before
every step. Nothing about it needs saving: a resumed run computes the lr of its step from the config it runs
with, so a changed optimizer.lr, warmup, schedule or train.max_steps applies from the resumed step on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from bert.config import OptimizerConfig


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and LayerNorm gains are 1-D; decaying them pulls them to zero for no regularisation benefit
    # (Google's BERT excludes "bias", "LayerNorm"; matching on ndim also catches renamed norms).
    return param.ndim <= 1 or name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed group and a `no_decay` group (bias and LayerNorm)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        (no_decay if _no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "use_trust_ratio": True},
        {"params": no_decay, "weight_decay": 0.0, "use_trust_ratio": False},
    ]


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments with a per-tensor trust ratio, for large-batch BERT pretraining.

    For every parameter tensor w with gradient g (after global clipping, done by the caller):

        m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2           (bias-corrected: m_hat, v_hat)
        u = m_hat / (sqrt(v_hat) + eps) + wd * w                          (decoupled weight decay)
        r = ||w|| / ||u||   if both norms > 0, else 1                     (the layer-wise trust ratio)
        w = w - lr * r * u

    As in NVIDIA's BERT recipe, groups with `use_trust_ratio=False` (biases and LayerNorm, which also get
    no weight decay) take a plain Adam step (r = 1). Bias correction is on, as in NVIDIA's FusedLAMB.

    Written with `torch._foreach_*` ops: a step launches a few kernels per group, not a dozen per tensor (a
    per-tensor loop costs thousands of kernel launches a step on a GPU). Like torch's fused Adam, a step
    skips itself on the device when `self.found_inf` (a float tensor, nonzero = skip) is set, so the
    training step never reads a flag back to the host: moments, step counts and weights stay exactly as
    they were.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, use_trust_ratio=True)
        super().__init__(params, defaults)
        self.found_inf: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            elif not torch.is_tensor(state["step"]):  # a state saved by the per-tensor version
                state["step"] = torch.tensor(float(state["step"]), device=p.device)
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        grads = [p.grad.float() for p in params]
        if self.found_inf is not None:
            # keep = 1 on a good step, 0 on a skipped one; non-finite gradients are zeroed first so that
            # keep * (new - old) is exactly 0 and nothing moves.
            keep = 1.0 - (self.found_inf.reshape(()) > 0).float()
            grads = [torch.where(torch.isfinite(g), g, 0.0) for g in grads]
            # lists of the 0-d device tensor, as torch's fused Adam does with found_inf: the tensor-scalar
            # overloads read the scalar back to the host outside CUDA
            torch._foreach_mul_(grads, [keep] * len(grads))
            torch._foreach_add_(steps, [keep] * len(steps))
        else:
            keep = None
            torch._foreach_add_(steps, 1.0)
        # m += (1 - b1)(g - m) and v += (1 - b2)(g^2 - v) are b1 m + (1 - b1) g and b2 v + (1 - b2) g^2;
        # on a skipped step the factors are 0 (keep) and the moments stay bit-identical.
        delta = torch._foreach_sub(grads, exp_avgs)
        torch._foreach_mul_(delta, (1 - beta1) if keep is None else [keep * (1 - beta1)] * len(delta))
        torch._foreach_add_(exp_avgs, delta)
        delta = torch._foreach_mul(grads, grads)
        torch._foreach_sub_(delta, exp_avg_sqs)
        torch._foreach_mul_(delta, (1 - beta2) if keep is None else [keep * (1 - beta2)] * len(delta))
        torch._foreach_add_(exp_avg_sqs, delta)
        # bias corrections per tensor (a step count of 0, a skipped first step, divides by 1, not 0)
        counts = torch.stack(steps).clamp(min=1.0)
        correction1 = (1 - beta1**counts).unbind()
        correction2_sqrt = (1 - beta2**counts).sqrt().unbind()
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, correction2_sqrt)
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(exp_avgs, correction1)
        torch._foreach_div_(update, denom)
        weights = [p.float() for p in params]
        if group["weight_decay"]:
            torch._foreach_add_(update, weights, alpha=group["weight_decay"])
        if group["use_trust_ratio"]:
            w_norm = torch.stack(torch._foreach_norm(weights))
            u_norm = torch.stack(torch._foreach_norm(update))
            ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            torch._foreach_mul_(update, (ratio * -group["lr"]).unbind())
        else:
            torch._foreach_mul_(update, -group["lr"])
        if keep is not None:
            torch._foreach_mul_(update, [keep] * len(update))
        if params[0].dtype == torch.float32 and all(p.dtype == torch.float32 for p in params):
            torch._foreach_add_(params, update)
        else:
            for p, u in zip(params, update):
                p.add_(u.to(p.dtype))


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or LAMB over `param_groups(model)`."""
    groups = param_groups(model, cfg.weight_decay)
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    for group in groups:
        group.pop("use_trust_ratio")
    # The fused kernel updates each tensor in one pass. Every step must update the whole word-embedding matrix
    # (Adam's moments decay even for rows without gradient), which the fused kernel does in one pass per
    # tensor; the saving is in BENCHMARKS.md. Same update, up to floating-point rounding.
    fused = cfg.fused and _fused_adamw_available()
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused
    )


def _fused_adamw_available() -> bool:
    """torch >= 2.4 has a fused AdamW for the CPU as well as CUDA (older releases: CUDA only)."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4)


def warmup_steps(cfg: OptimizerConfig, total_steps: int) -> int:
    """The warmup length in steps: `warmup_steps` if set, else `warmup_ratio` of the total."""
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(math.ceil(cfg.warmup_ratio * total_steps))


def lr_multiplier(step: int, cfg: OptimizerConfig, total_steps: int) -> float:
    """Factor applied to the peak lr at optimizer step `step` (0-based: the lr of the step about to run).

    Linear warmup from lr/warmup to lr over `warmup` steps, then to `min_lr_ratio * lr` at `total_steps`:
    linear, polynomial (`power`), none (constant), or warmup-stable-decay ('wsd': constant, then a linear
    decay over the last `decay_ratio` of the steps).
    """
    warmup = warmup_steps(cfg, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        decay_start = max(warmup, total_steps - int(round(cfg.decay_ratio * total_steps)))
        if step < decay_start:
            return 1.0
        progress = min((step - decay_start) / max(total_steps - decay_start, 1), 1.0)
        return floor + (1.0 - floor) * (1.0 - progress)
    remaining = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / remaining, 1.0)
    power = 1.0 if cfg.schedule == "linear" else cfg.power
    return floor + (1.0 - floor) * (1.0 - progress) ** power


def progress_multiplier(step: int, progress: float, cfg: OptimizerConfig) -> float:
    """The factor on the peak lr when the schedule runs on the fraction `progress` of a budget (time or
    tokens, bert/budget.py): warmup over `warmup_steps` steps or, when 0, the first `warmup_ratio` of the
    budget; then the decay of `schedule` over the rest, reaching min_lr_ratio when the budget is spent."""
    if cfg.warmup_steps > 0:
        warm, start = min(1.0, (step + 1) / cfg.warmup_steps), 0.0
    else:
        ratio = max(cfg.warmup_ratio, 1e-9)
        warm, start = min(1.0, max(progress, 1e-3 * ratio) / ratio), cfg.warmup_ratio
    if cfg.schedule == "constant":
        return warm
    q = min(max((progress - start) / max(1.0 - start, 1e-9), 0.0), 1.0)  # fraction of the decay phase
    floor = cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        decay_start = 1.0 - cfg.decay_ratio
        d = 0.0 if q < decay_start else (q - decay_start) / max(cfg.decay_ratio, 1e-9)
        return warm * (floor + (1.0 - floor) * (1.0 - d))
    power = 1.0 if cfg.schedule == "linear" else cfg.power
    return warm * (floor + (1.0 - floor) * (1.0 - q) ** power)


class Schedule:
    """The learning rate of every step: `cfg.lr * lr_multiplier(step, cfg, total_steps)`, or, for a time
    or token budget, `cfg.lr * progress_multiplier(step, progress, cfg)`."""

    def __init__(self, cfg: OptimizerConfig, total_steps: int | None) -> None:
        self.cfg = cfg
        self.total_steps = max(int(total_steps or 1), 1)

    def lr(self, step: int, progress: float | None = None) -> float:
        """The lr of 0-based optimizer step `step` (`progress`: the fraction of a budget used)."""
        if progress is not None:
            return self.cfg.lr * progress_multiplier(step, progress, self.cfg)
        return self.cfg.lr * lr_multiplier(step, self.cfg, self.total_steps)

    def apply(self, optimizer: torch.optim.Optimizer, step: int, progress: float | None = None) -> float:
        """Set the lr of `step` on every param group; returns it."""
        lr = self.lr(step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig) -> None:
    """Set betas, eps and weight decay from `cfg` on the groups of `param_groups` (decayed group first).

    `load_state_dict` restores the saved groups' values; this makes the current config win on resume."""
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    for i, group in enumerate(optimizer.param_groups):
        group["betas"], group["eps"] = betas, cfg.eps
        group["weight_decay"] = cfg.weight_decay if i == 0 else 0.0
