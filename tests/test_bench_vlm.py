"""`visualrwkv bench vlm`: the CI smoke run at tiny size (files and fields, never timings) and the
parameter match of the two sides at the default (paper-size) configuration."""

import importlib.util
import json

import pytest

from visualrwkv.bench.vlm_models import VLMBenchConfig, parameter_counts

CONTEXT_FIELDS = {"side", "context_tokens", "image_tokens", "prefill_chunk", "prefill_calls", "image_encode_s",
                  "prefill_s", "prefill_tok_s", "lm_prefill_tok_s", "decode_steps", "decode_ms_median",
                  "decode_tok_s", "baseline_memory_mb", "peak_memory_mb", "decode_memory_mb", "state_or_cache_mb",
                  "memory_method", "threads", "loadavg_1min"}
COBRA_FIELDS = {"side", "new_tokens", "prompt_tokens", "image_tokens", "image_encode_s", "total_s", "tokens_per_s",
                "baseline_memory_mb", "peak_memory_mb"}
RATIO_FIELDS = {"context_tokens", "decode_latency_llava_over_visualrwkv", "peak_memory_llava_over_visualrwkv",
                "peak_memory_visualrwkv_over_llava", "memory_above_models_llava_over_visualrwkv",
                "prefill_visualrwkv_over_llava"}


def test_quick_bench_through_the_cli(tmp_path):
    from visualrwkv.cli import main

    assert main(["bench", "vlm", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "vlm_bench.json").read_text())
    assert {"config", "machine", "parameters", "method", "context", "cobra", "ratios",
            "cobra_visualrwkv_over_llava", "claim_check"} <= set(results)
    assert {"cpu_count", "torch", "transformers", "loadavg_start", "loadavg_end"} <= set(results["machine"])
    lengths = results["config"]["context_lengths"]
    assert sorted((r["side"], r["context_tokens"]) for r in results["context"]) == \
        sorted((s, T) for s in ("visualrwkv", "llava") for T in lengths)
    for row in results["context"]:
        assert row["status"] == "ok" and CONTEXT_FIELDS <= set(row)
        assert row["prefill_calls"] >= 2  # the quick lengths exceed the quick chunk: chunked prefill ran
    # LLaVA's KV cache grows with the context, VisualRWKV's state does not
    cache = {(r["side"], r["context_tokens"]): r["state_or_cache_mb"] for r in results["context"]}
    assert cache["llava", lengths[-1]] > cache["llava", lengths[0]]
    assert cache["visualrwkv", lengths[-1]] == cache["visualrwkv", lengths[0]]
    assert sorted(r["side"] for r in results["cobra"]) == ["llava", "visualrwkv"]
    for row in results["cobra"]:
        assert row["status"] == "ok" and COBRA_FIELDS <= set(row)
    assert [r["context_tokens"] for r in results["ratios"]] == lengths
    for row in results["ratios"]:
        assert RATIO_FIELDS <= set(row)
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("vlm_decode_latency.png", "vlm_peak_memory.png"):
            assert (tmp_path / name).stat().st_size > 1000


def test_default_sizes_match_within_ten_percent():
    counts = parameter_counts(VLMBenchConfig())
    ours, llava = counts["visualrwkv"], counts["llava"]
    assert ours["vision"] == llava["vision"]  # the same CLIP tower on both sides
    for part in ("total", "language_model"):
        assert abs(llava[part] / ours[part] - 1) < 0.10, (part, ours[part], llava[part])


def test_config_is_validated():
    with pytest.raises(ValueError, match="attn"):
        VLMBenchConfig(attn="flash")
    with pytest.raises(ValueError, match="vision"):
        VLMBenchConfig(vision="huge")


@pytest.mark.parametrize("side_name", ["visualrwkv", "llava"])
def test_chunked_prefill_matches_one_call(side_name):
    """Chunked prefill (how the long contexts are run) gives the same logits and the same next step:
    LLaVA's later chunks and decode steps attend over the whole cache, RWKV continues its state."""
    import torch

    from visualrwkv.bench.vlm_models import quick_config
    from visualrwkv.bench.vlm_sides import make_side

    side = make_side(side_name, quick_config())
    pixels = side.pixels(torch.Generator().manual_seed(0))
    ids = side.context_ids([1, 2], list(range(100, 300)), 100)
    whole, chunked = side.prefill(ids, pixels, 0), side.prefill(ids, pixels, 40)
    assert (whole.chunks, chunked.chunks) == (1, 3)
    torch.testing.assert_close(chunked.logits, whole.logits, atol=1e-4, rtol=1e-4)
    assert side.memory_bytes(chunked.memory) == side.memory_bytes(whole.memory)
    torch.testing.assert_close(side.step(7, chunked.memory)[0], side.step(7, whole.memory)[0], atol=1e-4, rtol=1e-4)
