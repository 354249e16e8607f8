"""Exactness against the reference implementation: the `rwkv` package, strategy "cpu fp32"."""

import copy

import pytest
import torch

from visualrwkv import load_rwkv
from visualrwkv.testing import random_rwkv6_state_dict

rwkv_model = pytest.importorskip("rwkv.model")


@pytest.fixture(scope="module", params=[(128, 2), (256, 3)], ids=["C128-L2", "C256-L3"])
def pair(request, tmp_path_factory):
    width, layers = request.param
    path = tmp_path_factory.mktemp("oracle") / f"rwkv6-{width}-{layers}.pth"
    torch.save(random_rwkv6_state_dict(width, layers, seed=width + layers), path)
    reference = rwkv_model.RWKV(model=str(path)[: -len(".pth")], strategy="cpu fp32", verbose=False)
    return load_rwkv(path), reference


@pytest.mark.parametrize("layout", ["default", "gemv"])
def test_prompt_and_decode_logits_match_reference(pair, layout):
    ours, reference = pair
    if layout == "gemv":  # decoding by the compiled step (ops/rwkv_cpu.cpp) where a compiler is
        ours = copy.deepcopy(ours).use_gemv_layout()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, 65530, (300,), generator=g).tolist()
    ref_logits, ref_state = reference.forward(prompt, None, full_output=True)
    with torch.no_grad():
        logits, state = ours(torch.tensor([prompt]))
    assert (logits[0] - ref_logits).abs().max().item() <= 1e-4

    token = int(ref_logits[-1].argmax())
    for _ in range(20):
        ref_step, ref_state = reference.forward([token], ref_state)
        with torch.no_grad():
            step, state = ours(torch.tensor([[token]]), state)
        assert (step[0, -1] - ref_step).abs().max().item() <= 1e-4
        token = int(ref_step.argmax())

    # the states themselves agree too (rwkv layout: 3 tensors per layer)
    for i in range(ours.config.n_layer):
        att, wkv, ffn = state.layer(i)
        assert torch.allclose(att[0], ref_state[3 * i], atol=1e-4)
        assert torch.allclose(wkv[0], ref_state[3 * i + 1], atol=1e-4)
        assert torch.allclose(ffn[0], ref_state[3 * i + 2], atol=1e-4)
