"""int8/int4 weights (ops/quant.py) and the precision policy (rwkv/precision.py): the products equal a
dequantize-then-fp32 reference, the formats round-trip through files and the CLI, the engine runs them."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from visualrwkv.cli import main
from visualrwkv.engine.engine import Engine, ImageInput
from visualrwkv.engine.sampling import SamplingParams
from visualrwkv.model import VisualRWKV
from visualrwkv.ops.cpu_kernels import MAX_ROWS
from visualrwkv.ops.linear import gemm_dtype
from visualrwkv.ops.quant import (GROUP_SIZE, QuantizedEmbedding, QuantizedLinear, dequantize, from_tiles, pack_int4,
                                  quantize, tile_bytes, to_tiles, unpack_int4)
from visualrwkv.rwkv import precision
from visualrwkv.rwkv.checkpoint import load_rwkv, save_rwkv
from visualrwkv.rwkv.model import RWKV, RWKVConfig
from visualrwkv.testing import fp32_rounding_excess, random_rwkv6_state_dict


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 4]), groups=st.integers(1, 4), out=st.integers(1, 70),
       rows=st.sampled_from([1, 2, MAX_ROWS, MAX_ROWS + 1, 40]), seed=st.integers(0, 2**16))
def test_quantized_product_equals_dequantize_then_fp32(bits, groups, out, rows, seed):
    """A few rows (decoding) in fp32, within fp32's rounding of a length-K sum (sqrt(K) units of the unit roundoff
    times sum |x||w|, judged against float64: the kernel's summation order is its own, and BLAS's differs by CPU);
    more rows in the many-row dtype of this CPU (ops.linear.gemm_dtype: bf16 where the CPU has bf16 dot products,
    else fp32), equal to the dequantized weight's product in it."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, groups * GROUP_SIZE, generator=g)
    layer = QuantizedLinear.from_float(w, bits)
    x = torch.randn(rows, groups * GROUP_SIZE, generator=g)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (rows, out)
    if rows <= MAX_ROWS:
        assert fp32_rounding_excess(y, x, layer.dequantize(torch.float64)) <= 1
    else:
        dtype = gemm_dtype(x.device)
        reference = (x.to(dtype) @ layer.dequantize(dtype).t()).float()
        torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([8, 4]), rows=st.integers(1, 9), groups=st.integers(1, 3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_rounding_error_is_within_half_a_step(bits, rows, groups, seed, scale):
    w = scale * torch.randn(rows, groups * GROUP_SIZE, generator=torch.Generator().manual_seed(seed))
    codes, scales = quantize(w, bits)
    assert codes.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert codes.shape == (rows, groups * GROUP_SIZE // (1 if bits == 8 else 2)) and scales.shape == (rows, groups)
    back = dequantize(codes, scales, bits)
    step = scales.float().repeat_interleave(GROUP_SIZE, -1).abs()
    if bits == 8:  # absmax rule: every value within half a step (plus the fp16 scale's own rounding)
        assert ((back - w).abs() <= 0.5 * step + 2e-3 * w.abs().amax(-1, keepdim=True)).all()
    else:  # the chosen scale is the best of candidates that include the absmax/-8 one
        plain = w.reshape(-1, GROUP_SIZE)
        s = plain.gather(-1, plain.abs().argmax(-1, keepdim=True)) / -8
        q = (plain / s).round().clamp(-8, 7)
        assert (back - w).square().sum() <= (q * s - plain).square().sum() * 1.01 + 1e-12


def test_int4_packing_is_exact_and_ordered():
    q = torch.arange(-8, 8).repeat(2)[None]
    packed = pack_int4(q)
    assert packed.shape == (1, 16) and packed[0, 0] == (0 | (1 << 4))  # value 0 low nibble, value 1 high
    assert torch.equal(unpack_int4(packed), q.to(torch.int8))


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([8, 4]), group=st.sampled_from([2, 6, 8, 32, 34, 64, 256]), groups=st.integers(1, 3),
       out=st.integers(1, 200), data=st.data())
def test_tiles_hold_the_codes_and_give_any_block_of_rows_back(bits, group, groups, out, data):
    """The tile layout (padded groups, 64-column tiles, a narrower last one) is a permutation of the codes: every
    block of output rows comes back as quantize() gave it, from the tiles alone and by the compiled kernel."""
    w = torch.randn(out, group * groups, generator=torch.Generator().manual_seed(out + group))
    codes, scales = quantize(w, bits, group)
    tiles = to_tiles(codes, bits, group)
    assert tiles.dtype == torch.uint8 and tiles.numel() == tile_bytes(group * groups, out, bits, group)
    layer = QuantizedLinear.from_float(w, bits, group)
    assert torch.equal(layer.weight, tiles)
    a = data.draw(st.integers(0, out - 1))
    b = data.draw(st.integers(a + 1, out))
    assert torch.equal(from_tiles(tiles, bits, group, group * groups, out, a, b), codes[a:b])
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(layer.dequantize_rows(a, b, dtype), dequantize(codes[a:b], scales[a:b], bits, dtype))
    with pytest.raises(ValueError, match="not a block of this layer's"):
        layer.dequantize_rows(a, out + 1)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantized_layer_keeps_the_codes_format_in_its_state_dict(bits):
    w = torch.randn(70, 96)
    layer = QuantizedLinear.from_float(w, bits)
    codes, scales = quantize(w, bits)
    sd = layer.state_dict()
    assert torch.equal(sd["weight"], codes) and torch.equal(sd["weight_scales"], scales)
    fresh = QuantizedLinear(96, 70, bits)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.weight, layer.weight) and torch.equal(fresh.dequantize(), layer.dequantize())
    assigned = QuantizedLinear(96, 70, bits, device="meta")
    assigned.load_state_dict(sd, assign=True)
    assert torch.equal(assigned.weight, layer.weight)


def test_zero_groups_and_bad_shapes():
    codes, scales = quantize(torch.zeros(2, 64), 4)
    assert torch.equal(dequantize(codes, scales, 4), torch.zeros(2, 64))
    with pytest.raises(ValueError, match="do not split into groups of 32"):
        QuantizedLinear.from_float(torch.randn(4, 48), 8)
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize(torch.randn(4, 64), 3)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_embedding_reads_rows(bits):
    w = torch.randn(50, 64)
    emb = QuantizedEmbedding.from_float(w, bits)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    assert torch.equal(emb(ids), emb.dequantize()[ids])
    assert (emb(ids) - w[ids]).abs().max() < (0.02 if bits == 8 else 0.3)


@pytest.fixture(scope="module")
def lm_sd():
    return random_rwkv6_state_dict(64, 2, vocab_size=300, seed=3)


def _lm(sd, dtype="float32"):
    model = RWKV(RWKVConfig(n_embd=64, n_layer=2, vocab_size=300))
    model.load_state_dict(sd)
    return precision.set_precision(model, dtype).eval()


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "int4"])
def test_only_large_matrices_are_reduced(lm_sd, dtype):
    model = _lm(lm_sd, dtype)
    assert precision.current_precision(model) == dtype
    large = {n for n, _ in precision.large_matrices(model)}
    assert large == {"emb", "head"} | {f"blocks.{i}.{m}" for i in range(2) for m in
                                       ("att.receptance", "att.key", "att.value", "att.gate", "att.output",
                                        "ffn.key", "ffn.receptance", "ffn.value")}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name.rpartition(".")[0] not in large:
            assert t.dtype == torch.float32, name  # decays, bonus, LoRAs, mixes, norms
    assert model.dtype == torch.float32


def test_reduced_logits_drift_in_the_order_of_their_bits(lm_sd):
    """Mean |Δlogit| against fp32 over a prompt and the steps after it (logit std ~1): fp16 < bf16 < int8 < int4,
    each within a bound that a broken format (wrong scale, nibble order, layout) exceeds many times over."""
    x = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    steps = torch.tensor([[5], [6]])

    def logits(model):
        with torch.no_grad():
            prompt, state = model(x)
            rows = [prompt]
            for _ in range(3):
                step, state = model(steps, state, logits="last")
                rows.append(step[:, None])
        return torch.cat(rows, 1)

    reference = logits(_lm(lm_sd))
    drift = {d: (logits(_lm(lm_sd, d)) - reference).abs().mean().item() for d in ("float16", "bfloat16", "int8", "int4")}
    assert drift["float16"] < drift["bfloat16"] < drift["int8"] < drift["int4"], drift
    assert drift["bfloat16"] < 0.01 and drift["int8"] < 0.04 and drift["int4"] < 0.5, drift


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantize_save_load_round_trip(lm_sd, dtype, tmp_path):
    model = _lm(lm_sd, dtype)
    save_rwkv(model, tmp_path / "q.safetensors")
    again = load_rwkv(tmp_path / "q.safetensors")  # the stored format, without asking
    assert precision.current_precision(again) == dtype
    x = torch.randint(0, 300, (1, 7))
    with torch.no_grad():
        assert torch.equal(model(x)[0], again(x)[0])
    as_float = load_rwkv(tmp_path / "q.safetensors", dtype="float32")  # dequantized on load
    assert as_float.head.weight.dtype == torch.float32
    assert as_float.head.weight.t().is_contiguous()  # input-major, as the compiled decode step reads it
    assert torch.equal(as_float.head.weight, model.head.dequantize())
    other = "int4" if dtype == "int8" else "int8"
    with pytest.raises(ValueError, match="requantizing"):
        load_rwkv(tmp_path / "q.safetensors", dtype=other)
    with pytest.raises(ValueError, match="quantize the model first"):
        save_rwkv(_lm(lm_sd), tmp_path / "x.safetensors", dtype=dtype)


def test_quantize_command_on_a_model_directory(tiny_vlm, tiny_vlm_dir, tmp_path, capsys):
    out = tmp_path / "int4"
    assert main(["quantize", str(tiny_vlm_dir), str(out), "--bits", "4"]) == 0
    assert "in int4" in capsys.readouterr().out
    loaded = VisualRWKV.from_pretrained(out)
    assert precision.current_precision(loaded.rwkv) == "int4"
    assert all(p.dtype == torch.float32 for p in (*loaded.vit.parameters(), *loaded.proj.parameters()))
    expected = copy.deepcopy(tiny_vlm).set_precision("int4")
    ids = tiny_vlm.tokenizer.encode("hello there")
    assert loaded.generate_greedy(ids, max_new_tokens=6) == expected.generate_greedy(ids, max_new_tokens=6)
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.3 * (tiny_vlm_dir / "model.safetensors").stat().st_size
    lm_path = tmp_path / "lm.safetensors"  # a language model alone
    save_rwkv(tiny_vlm.rwkv, lm_path)
    assert main(["quantize", str(lm_path), str(tmp_path / "lm-q"), "--bits", "8"]) != 0
    assert "OUT must be a .safetensors file" in capsys.readouterr().err
    assert main(["quantize", str(lm_path), str(tmp_path / "lm-int8.safetensors"), "--bits", "8"]) == 0
    assert precision.current_precision(load_rwkv(tmp_path / "lm-int8.safetensors")) == "int8"


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantized_model_through_the_engine(tiny_vlm, dtype):
    model = copy.deepcopy(tiny_vlm).set_precision(dtype)
    red = ImageInput.from_bytes(_png((200, 30, 30)))
    params = SamplingParams(max_tokens=12, temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0)
    with Engine(model) as engine:
        prompts = [engine.build_prompt(q, red) for q in ("What color is it?", "How many shapes?")]
        handles = [engine.submit(p, params) for p in prompts]  # batched together
        results = [h.result() for h in handles]
    for prompt, r in zip(prompts, results):
        assert r.token_ids == model.generate_greedy(prompt.ids, [red.image], max_new_tokens=12)


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


def test_heldout_quality_against_fp32(tiny_vlm, tmp_path):
    from visualrwkv.bench.quality import heldout_quality, quality_table
    from visualrwkv.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(tmp_path, num_train_images=1, num_test_images=2)["test"]
    before = tiny_vlm.rwkv.head.weight.clone()
    rows = {r.precision: r for r in heldout_quality(tiny_vlm, data, ["int8", "int4"], limit=3)}
    assert torch.equal(tiny_vlm.rwkv.head.weight, before)  # the shared model is left as it was
    fp32, int8, int4 = rows["float32"], rows["int8"], rows["int4"]
    assert fp32.questions == 3 and fp32.answer_tokens >= 3
    assert (fp32.perplexity_delta, fp32.max_abs_diff, fp32.greedy_agreement) == (0, 0, 1)
    assert 0 < int8.mean_abs_diff < int4.mean_abs_diff and int8.perplexity > 1
    assert "| int4 | 3 |" in quality_table(list(rows.values()))
