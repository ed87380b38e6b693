"""Optimiser param groups, LAMB and the learning-rate schedule (bert/optim.py)."""

import math

import pytest
import torch
from torch import nn

from bert.config import OptimizerConfig
from bert.optim import Lamb, Schedule, apply_hyperparameters, build_optimizer, lr_multiplier, param_groups


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 3)
        self.LayerNorm = nn.LayerNorm(3)
        self.emb = nn.Embedding(5, 4)


def test_param_groups_exclude_bias_and_layernorm_from_weight_decay():
    model = Tiny()
    decay, no_decay = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["dense.weight", "emb.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "LayerNorm.bias",
        "LayerNorm.weight",
        "dense.bias",
    ]
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


def test_adamw_does_not_decay_bias():
    model = Tiny()
    opt = build_optimizer(model, OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only weight decay can move a parameter
    bias, weight = model.dense.bias.detach().clone(), model.dense.weight.detach().clone()
    opt.step()
    assert torch.equal(model.dense.bias, bias)
    assert torch.allclose(model.dense.weight, weight * (1 - 0.1 * 0.5))


def test_fused_adamw_is_the_default_and_matches_the_unfused_one():
    torch.manual_seed(0)
    fused_model, plain_model = Tiny(), Tiny()
    plain_model.load_state_dict(fused_model.state_dict())
    start = fused_model.dense.weight.detach().clone()
    fused = build_optimizer(fused_model, OptimizerConfig(lr=0.01))
    plain = build_optimizer(plain_model, OptimizerConfig(lr=0.01, fused=False))
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in fused_model.parameters()]
        for model, opt in ((fused_model, fused), (plain_model, plain)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert (fused_model.dense.weight - start).abs().min() > 1e-3  # the steps did move every weight


@pytest.mark.parametrize(
    "schedule,step,expected",
    [
        ("linear", 0, 0.1),  # warmup: (step + 1) / warmup
        ("linear", 9, 1.0),
        ("linear", 10, 1.0),  # peak right after warmup
        ("linear", 55, 0.5),  # halfway through the decay (10 + 90 / 2)
        ("linear", 100, 0.0),
        ("polynomial", 55, 0.5**2),  # power 2
        ("constant", 80, 1.0),
        ("wsd", 79, 1.0),  # stable until the last 20% (decay_ratio 0.2)
        ("wsd", 90, 0.5),  # halfway through the decay from step 80 to 100
        ("wsd", 100, 0.0),
    ],
)
def test_lr_schedule_values(schedule, step, expected):
    cfg = OptimizerConfig(warmup_steps=10, schedule=schedule, power=2.0)
    assert lr_multiplier(step, cfg, total_steps=100) == pytest.approx(expected)


def test_warmup_ratio_and_floor():
    cfg = OptimizerConfig(warmup_steps=0, warmup_ratio=0.1, min_lr_ratio=0.1)
    assert lr_multiplier(0, cfg, 200) == pytest.approx(1 / 20)
    assert lr_multiplier(200, cfg, 200) == pytest.approx(0.1)


def test_schedule_sets_the_lr_of_each_step_on_every_group():
    model = Tiny()
    cfg = OptimizerConfig(lr=1e-3, warmup_steps=4, schedule="linear")
    opt = build_optimizer(model, cfg)
    schedule = Schedule(cfg, total_steps=8)
    lrs = []
    for step in range(8):
        lrs.append(schedule.apply(opt, step))
        assert all(group["lr"] == lrs[-1] for group in opt.param_groups)
        opt.step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    # A pure function of the step: a resumed run computes the same lr without any saved state.
    assert Schedule(cfg, total_steps=8).lr(5) == pytest.approx(7.5e-4)


def test_apply_hyperparameters_makes_the_current_config_win_over_a_loaded_state():
    model = Tiny()
    old = build_optimizer(model, OptimizerConfig(weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6))
    new_cfg = OptimizerConfig(weight_decay=0.1, betas=(0.8, 0.99), eps=1e-8)
    new = build_optimizer(model, new_cfg)
    new.load_state_dict(old.state_dict())
    assert new.param_groups[0]["weight_decay"] == 0.01  # what load_state_dict restored
    apply_hyperparameters(new, new_cfg)
    assert [g["weight_decay"] for g in new.param_groups] == [0.1, 0.0]
    assert all(g["betas"] == (0.8, 0.99) and g["eps"] == 1e-8 for g in new.param_groups)


def test_lamb_step_matches_the_formula():
    w0 = torch.tensor([3.0, 4.0])  # ||w|| = 5
    g = torch.tensor([0.5, -1.0])
    param = nn.Parameter(w0.clone())
    bias = nn.Parameter(torch.tensor([1.0]))
    opt = Lamb(
        [
            {"params": [param], "weight_decay": 0.1, "use_trust_ratio": True},
            {"params": [bias], "weight_decay": 0.0, "use_trust_ratio": False},
        ],
        lr=0.01,
        betas=(0.9, 0.999),
        eps=1e-6,
    )
    param.grad, bias.grad = g.clone(), torch.tensor([2.0])
    opt.step()
    # First step: m_hat = g, v_hat = g^2, adam = g / (|g| + eps) ~ sign(g)
    adam = g / (g.abs() + 1e-6)
    update = adam + 0.1 * w0
    ratio = w0.norm() / update.norm()
    assert torch.allclose(param.detach(), w0 - 0.01 * ratio * update, atol=1e-7)
    # no trust ratio and no decay on the bias group: a plain Adam step of size lr
    assert bias.item() == pytest.approx(1.0 - 0.01 * 2.0 / (2.0 + 1e-6))
    assert not math.isclose(float(ratio), 1.0)


def test_lamb_zero_weight_uses_ratio_one():
    param = nn.Parameter(torch.zeros(3))
    opt = Lamb([param], lr=0.1, weight_decay=0.0)
    param.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(param.detach(), torch.full((3,), -0.1), atol=1e-6)
