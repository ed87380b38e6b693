"""The MLM decoder computed over vocabulary slices must give what nn.Linear gives, forward and backward.
(The tied word-embedding gradient, with slices, is checked against transformers in test_model_parity.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bert.model.projection as projection
from bert.model.projection import VocabularyProjection


@pytest.fixture
def small_slices(monkeypatch):
    monkeypatch.setattr(projection, "SLICE_ROWS", 16)  # 99 = 6 slices of 16 + one of 3


def test_sliced_projection_equals_linear_forward_and_backward(small_slices):
    torch.manual_seed(0)
    layer = VocabularyProjection(32, 99)
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


def test_sliced_projection_falls_back_to_linear_under_autocast(small_slices, monkeypatch):
    calls = []
    monkeypatch.setattr(projection._SlicedLinear, "apply", lambda *a: calls.append(1))
    layer = VocabularyProjection(32, 99)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(3, 32))
    assert out.dtype == torch.bfloat16 and not calls
