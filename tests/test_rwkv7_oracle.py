"""RWKV-7 exactness against the reference implementation: the `rwkv` package, RWKV_V7_ON=1, "cpu fp32".

The package chooses its model class when it is imported, so it runs in a subprocess
(rwkv7_oracle.py): a 300-token prompt, then 20 greedy single-token steps, and its final state.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from visualrwkv import load_rwkv
from visualrwkv.testing import random_rwkv7_state_dict

pytest.importorskip("rwkv.model")
ORACLE = Path(__file__).with_name("rwkv7_oracle.py")
STEPS = 20

CASES = {
    "C128-L2": dict(n_embd=128, n_layer=2),
    # the 0B4 file's ranks (64/64/32/128, not the formula's) and the unused layer-0 v0/v1/v2 of some files
    "C256-L3-0B4ranks-v0": dict(n_embd=256, n_layer=3, decay_rank=64, a_rank=64, value_rank=32, gate_rank=128,
                                layer0_value_residual=True),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    kwargs = CASES[request.param]
    tmp = tmp_path_factory.mktemp("oracle7")
    torch.save(random_rwkv7_state_dict(seed=len(request.param), **kwargs), tmp / "model.pth")
    prompt = torch.randint(1, 65530, (300,), generator=torch.Generator().manual_seed(1))
    torch.save(prompt, tmp / "prompt.pt")
    done = subprocess.run([sys.executable, str(ORACLE), str(tmp / "model.pth"), str(tmp / "prompt.pt"), str(STEPS),
                           str(tmp / "out.pt")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_rwkv(tmp / "model.pth"), prompt, torch.load(tmp / "out.pt")


@torch.no_grad()
def test_prompt_steps_and_state_match_the_rwkv_package(case):
    ours, prompt, ref = case
    logits, state = ours(prompt[None])  # the chunked parallel form
    assert (logits[0] - ref["prompt_logits"]).abs().max().item() <= 1e-4
    for token, ref_step in zip(ref["tokens"].tolist(), ref["step_logits"]):  # the one-token step
        step, state = ours(torch.tensor([[token]]), state)
        assert (step[0, -1] - ref_step).abs().max().item() <= 1e-4
    for i in range(ours.config.n_layer):  # the package's layout: 3 tensors per layer, wkv [H, value, key]
        for ours_t, ref_t in zip(state.layer(i), ref["state"][3 * i : 3 * i + 3]):
            assert (ours_t[0] - ref_t).abs().max().item() <= 1e-4
