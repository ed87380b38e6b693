"""The CPU dropout of bert/model/dropout.py: rate, scaling, reproducibility, gradients."""

import pytest
import torch

from bert.model.dropout import Dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_and_scale(p):
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(1000, 401)  # an element count that is not a multiple of 4
    y = drop(x)
    dropped = y == 0
    keep_probability = 1 - round(p * 65536) / 65536
    assert dropped.float().mean().item() == pytest.approx(p, abs=0.003)  # 401k draws: sd ~0.0005
    assert torch.allclose(y[~dropped], torch.full_like(y[~dropped], 1 / keep_probability))
    # Every one of the four 16-bit lanes of a 64-bit draw is uniform (a zero top bit would keep lane 3 always).
    lanes = dropped.flatten()[: 4 * (x.numel() // 4)].view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full((4,), p), atol=0.006)


def test_expectation_is_the_input():
    torch.manual_seed(1)
    x = torch.randn(64)
    mean = torch.stack([Dropout(0.1).train()(x) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, x, atol=0.05)


def test_eval_mode_and_p_zero_are_identity():
    x = torch.randn(8, 16)
    assert torch.equal(Dropout(0.1).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_seeded_and_gradient_follows_the_mask():
    x = torch.randn(32, 48, requires_grad=True)
    torch.manual_seed(7)
    y1 = Dropout(0.2).train()(x)
    torch.manual_seed(7)
    y2 = Dropout(0.2).train()(x)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    scale = 65536 / (65536 - round(0.2 * 65536))
    expected = torch.where(y1 != 0, torch.tensor(scale), torch.tensor(0.0))
    assert torch.allclose(x.grad, expected)
