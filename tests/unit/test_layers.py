"""Shared layers: in-place activations, residual adds and reused output buffers where no gradient needs them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blipkit.configs import BlipVisionConfig
from blipkit.modeling.layers import ACTIVATIONS, IN_PLACE_ACTIVATIONS, MLP, Workspace, residual
from blipkit.modeling.vision import BlipVisionModel


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


def test_workspace_keeps_a_buffer_per_name_until_its_shape_or_dtype_changes():
    assert Workspace.current() is None
    with Workspace.reused() as workspace:
        assert Workspace.current() is workspace
    assert Workspace.current() is None
    like = torch.zeros(1)
    first = workspace.buffer("mlp.hidden", (2, 3), like)
    assert workspace.buffer("mlp.hidden", (2, 3), like) is first
    assert workspace.buffer("qkv", (2, 3), like) is not first
    assert workspace.buffer("mlp.hidden", (4, 3), like).shape == (4, 3)
    assert workspace.buffer("mlp.hidden", (4, 3), like.bfloat16()).dtype == torch.bfloat16


def _tiny_vit() -> BlipVisionModel:
    torch.manual_seed(0)
    config = BlipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
    )
    model = BlipVisionModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # built for loading, the parameters hold whatever memory held
            param.normal_(std=0.2)
    return model


def _storages_written_by(model: BlipVisionModel, suffix: str, run) -> list[int]:
    seen = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out: seen.append(out.untyped_storage().data_ptr()))
        for name, module in model.named_modules()
        if name.endswith(suffix)
    ]
    run()
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("suffix", ["attn.qkv", "mlp.fc1"])
def test_vit_layers_share_their_large_outputs_only_where_no_gradient_flows(suffix):
    model = _tiny_vit()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shared = _storages_written_by(model, suffix, lambda: model(pixels))
    tracked = _storages_written_by(model, suffix, lambda: model(pixels).last_hidden_state.sum().backward())
    assert len(shared) == len(tracked) == 3
    assert len(set(shared)) == 1 and len(set(tracked)) == 3


def test_vit_output_is_bit_identical_with_and_without_the_workspace():
    model = _tiny_vit()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reused = model(pixels, output_hidden_states=True)
    fresh = model(pixels, output_hidden_states=True)  # gradients on: nothing is overwritten or shared
    assert torch.equal(reused.last_hidden_state, fresh.last_hidden_state)
    for kept, expected in zip(reused.hidden_states, fresh.hidden_states, strict=True):
        assert torch.equal(kept, expected)  # the states handed back are never a reused buffer
