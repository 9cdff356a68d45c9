"""Shared layers: in-place activations and residual adds where no gradient needs their inputs kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blipkit.modeling.layers import ACTIVATIONS, IN_PLACE_ACTIVATIONS, MLP, residual


@pytest.mark.parametrize("name", sorted(IN_PLACE_ACTIVATIONS))
def test_in_place_activations_equal_their_functions(name):
    x = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3
    expected = ACTIVATIONS[name](x)
    out = IN_PLACE_ACTIVATIONS[name](x)
    assert out.data_ptr() == x.data_ptr() and torch.equal(out, expected)


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_mlp_gives_the_same_values_and_gradients_either_way(act):
    torch.manual_seed(0)
    mlp = MLP(8, 16, act)
    x = torch.randn(3, 8)
    with torch.no_grad():
        no_grad = mlp(x)
    expected = F.linear(ACTIVATIONS[act](F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    torch.testing.assert_close(no_grad, expected)
    with_grad = mlp(x)
    with_grad.sum().backward()  # an in-place activation here would fail: gelu's gradient needs its input
    expected_grad = torch.autograd.grad(
        F.linear(ACTIVATIONS[act](F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias).sum(),
        mlp.fc1.weight,
    )[0]
    assert torch.equal(with_grad, no_grad)
    torch.testing.assert_close(mlp.fc1.weight.grad, expected_grad)


def test_residual_writes_into_the_update_only_without_gradients():
    x, update = torch.ones(3), torch.full((3,), 2.0)
    assert residual(update, x) is update and update.tolist() == [3.0, 3.0, 3.0]
    tracked = torch.full((3,), 2.0, requires_grad=True) * 1
    out = residual(tracked, x)
    assert out is not tracked and tracked.tolist() == [2.0, 2.0, 2.0] and out.tolist() == [3.0, 3.0, 3.0]
