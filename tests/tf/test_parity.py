"""Forward parity: every Keras class's outputs within 1e-4 of blipkit's torch class on the same checkpoint (fp32)."""

from __future__ import annotations

import pytest
import torch

from tests.tf.cases import FORWARD, arrays, as_torch, assert_same_outputs

pytestmark = pytest.mark.backends  # run again on JAX

ATOL = 1e-4


@pytest.mark.parametrize("case", FORWARD)
def test_forward_matches_torch(case, pair, inputs):
    checkpoint, call = FORWARD[case]
    torch_model, tf_model = pair(checkpoint)
    with torch.no_grad():
        expected = arrays(call(torch_model, as_torch(inputs)))
    assert_same_outputs(arrays(call(tf_model, inputs)), expected, ATOL)
