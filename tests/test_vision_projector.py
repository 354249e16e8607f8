"""Projectors: official key names, the v7 gating formula, and kind/dims inferred from weights."""

import pytest
import torch

from visualrwkv.vision.projector import (
    GatedMLPProjector,
    HDProjector,
    LinearProjector,
    build_projector,
    infer_projector,
    projector_from_state_dict,
)


def test_linear_projector_keys_and_math():
    torch.manual_seed(0)
    projector = build_projector("linear", 12, 8)
    assert isinstance(projector, LinearProjector)
    assert {k: tuple(v.shape) for k, v in projector.state_dict().items()} == {"weight": (8, 12)}
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(projector(x), x @ projector.weight.T)


def test_gated_mlp_projector_keys_and_formula():
    torch.manual_seed(0)
    projector = build_projector("mlp", 12, 8)
    assert isinstance(projector, GatedMLPProjector)
    shapes = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    assert shapes == {"gate.weight": (12, 12), "o_proj.weight": (8, 12), "ln_v.weight": (8,), "ln_v.bias": (8,)}
    with torch.no_grad():
        projector.ln_v.weight.uniform_(0.5, 1.5)
        projector.ln_v.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 12)
    gated = x * torch.sigmoid(x @ projector.gate.weight.T)
    expected = torch.nn.functional.layer_norm(
        gated @ projector.o_proj.weight.T, (8,), projector.ln_v.weight, projector.ln_v.bias, eps=1e-5
    )
    torch.testing.assert_close(projector(x), expected)
    assert projector.ln_v.eps == 1e-5


def test_hd_projector_keys_and_formula():
    torch.manual_seed(0)
    projector = build_projector("hd", 12, 8, hidden_dim=10)
    assert isinstance(projector, HDProjector)
    shapes = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    assert shapes == {"proj.weight": (10, 12), "gate.weight": (10, 10), "o_proj.weight": (8, 10)}
    x = torch.randn(3, 12)
    hidden = x @ projector.proj.weight.T
    expected = (hidden * torch.sigmoid(hidden @ projector.gate.weight.T)) @ projector.o_proj.weight.T
    torch.testing.assert_close(projector(x), expected)


@pytest.mark.parametrize("kind,options", [("linear", {}), ("mlp", {}), ("hd", {"hidden_dim": 6})])
def test_rebuilt_from_weights_with_or_without_the_official_prefix(kind, options):
    torch.manual_seed(0)
    original = build_projector(kind, 12, 8, **options)
    x = torch.randn(4, 12)
    relative = original.state_dict()
    official = {"proj." + k: v for k, v in relative.items()}
    for state_dict in (relative, official):
        assert infer_projector(state_dict) == (kind, 12, 8, options)
        rebuilt = projector_from_state_dict(state_dict)
        assert type(rebuilt) is type(original)
        torch.testing.assert_close(rebuilt(x), original(x), rtol=0, atol=0)


def test_bfloat16_weights_load():
    weights = {"proj.weight": torch.randn(8, 12).to(torch.bfloat16)}
    projector = projector_from_state_dict(weights)
    torch.testing.assert_close(projector.weight, weights["proj.weight"].float())


def test_bad_inputs_are_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        build_projector("mlp2x_gelu", 4, 4)
    with pytest.raises(ValueError, match="in_dim"):
        build_projector("linear", 0, 4)
    with pytest.raises(ValueError, match="cannot recognise a projector"):
        infer_projector({"gate.weight": torch.zeros(4, 4)})
    inconsistent = {"gate.weight": torch.zeros(4, 4), "o_proj.weight": torch.zeros(3, 5),
                    "ln_v.weight": torch.zeros(3), "ln_v.bias": torch.zeros(3)}
    with pytest.raises(ValueError, match="inconsistent"):
        projector_from_state_dict(inconsistent)
