"""`visualrwkv bench lm`: the CI smoke run at tiny size (files and fields, never timings)."""

import json

import pytest
import torch

from visualrwkv.bench import lm
from visualrwkv.bench.lm import copy_bandwidth, weight_bytes_per_token
from visualrwkv.cli import main
from visualrwkv.rwkv.model import RWKV, RWKVConfig
from visualrwkv.rwkv.precision import set_precision


def test_quick_lm_bench_through_the_cli(tmp_path, capsys):
    out = tmp_path / "lm.json"
    assert main(["bench", "lm", "--configs", "64x2", "--prompt", "20", "--decode-steps", "2", "--repeats", "1",
                 "--vocab", "300", "--batch", "3", "--bf16", "--compile", "--bandwidth-buffer-mib", "8",
                 "--no-llama-cpp", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = {r["impl"]: r for r in results["rows"]}
    assert set(rows) == {"visualrwkv", "visualrwkv-bf16", "visualrwkv-compile", "rwkv-0.8"}
    for row in rows.values():
        assert (row["n_embd"], row["n_layer"], row["prompt_tokens"]) == (64, 2, 20)
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0
    ours, bf16 = rows["visualrwkv"], rows["visualrwkv-bf16"]
    # only the large matrices are bf16 (rwkv/precision.py), so a little more than half of fp32's bytes
    assert ours["weight_bytes_per_token"] / 2 < bf16["weight_bytes_per_token"] < 0.7 * ours["weight_bytes_per_token"]
    assert ours["copy_bandwidth_bytes_per_s"] > 0
    assert ours["decode_bound_tok_s"] == pytest.approx(ours["copy_bandwidth_bytes_per_s"] / ours["weight_bytes_per_token"])
    assert ours["batch"] == 3 and ours["batched_decode_tok_s"] > 0 and ours["matrix_pass_tok_s"] > 0
    assert rows["visualrwkv-compile"]["weight_bytes_per_token"] == ours["weight_bytes_per_token"]
    assert rows["rwkv-0.8"]["batched_decode_tok_s"] is None  # the package decodes one sequence at a time
    assert "| C64/L2 | visualrwkv | 20 |" in capsys.readouterr().out


def test_weight_bytes_count_blocks_head_and_one_embedding_row():
    model = RWKV(RWKVConfig(n_embd=64, n_layer=2, vocab_size=300))
    everything = sum(p.numel() * 4 for p in model.parameters())
    fp32 = weight_bytes_per_token(model)
    assert fp32 == everything - 299 * 64 * 4
    large = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear)) + 64 * 4
    assert weight_bytes_per_token(set_precision(model, "bfloat16")) == fp32 - large // 2
    assert weight_bytes_per_token(model.to(torch.bfloat16)) == fp32 // 2  # (Module.to converts in place)


def test_copy_bandwidth_is_a_rate():
    assert 1e8 < copy_bandwidth(4 << 20, repeats=3) < 1e13


def test_copy_bandwidth_is_read_plus_write_over_the_median_time(monkeypatch):
    # the arithmetic, exactly, with the clock replaced: copies of 3, 1 and 2 s of 1000 bytes -> 2 * 1000 / 2
    import visualrwkv.bench.lm as lm

    times = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(lm, "copy_timer", lambda nbytes: (lambda: next(times)))
    assert lm.copy_bandwidth(1000, repeats=3) == 1000.0


def test_copy_timer_times_one_copy_of_the_whole_buffer():
    # the measured rate agrees, within 4x either way, with an independent timing of the same copy size: a wrong
    # buffer size (nbytes read as elements, or bits) would be off by 4x or 8x; timing noise on a shared CPU is
    # smaller than that for the best of several tries
    import time

    from visualrwkv.bench.lm import copy_timer

    nbytes = 16 << 20
    src, dst = torch.ones(nbytes // 4), torch.empty(nbytes // 4)
    dst.copy_(src)

    def direct() -> float:
        t0 = time.perf_counter()
        dst.copy_(src)
        return time.perf_counter() - t0

    timer = copy_timer(nbytes)
    ours = min(timer() for _ in range(15))
    reference = min(direct() for _ in range(15))
    assert reference / 4 < ours < reference * 4


def test_bad_config_is_named():
    with pytest.raises(SystemExit, match="768by12"):
        main(["bench", "lm", "--configs", "768by12"])


def test_quick_rwkv7_lm_bench(tmp_path, capsys):
    # import the package in its RWKV-6 mode first, as the other tests here expect it (it reads RWKV_V7_ON once)
    pytest.importorskip("rwkv.model")
    out = tmp_path / "lm7.json"
    assert main(["bench", "lm", "--version", "7", "--configs", "64x2", "--prompt", "20", "--decode-steps", "2",
                 "--repeats", "1", "--vocab", "300", "--batch", "2", "--bandwidth-buffer-mib", "8",
                 "--out", str(out)]) == 0
    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    ours = rows["visualrwkv"]
    assert ours["version"] == 7 and ours["decode_tok_s"] > 0 and ours["batched_decode_tok_s"] > 0
    assert set(rows) == {"visualrwkv"}  # no RWKV-7 reference from a package imported for RWKV-6
    printed = capsys.readouterr().out
    assert "no reference for RWKV-7" in printed and "| C64/L2 RWKV-7 | visualrwkv | 20 |" in printed


def test_quantized_rows_and_the_accuracy_table(tmp_path):
    out = tmp_path / "lm.json"
    assert main(["bench", "lm", "--configs", "64x2", "--prompt", "20", "--decode-steps", "2", "--repeats", "1",
                 "--vocab", "300", "--batch", "1", "--dtypes", "int8", "int4", "--accuracy-steps", "8",
                 "--bandwidth-buffer-mib", "8", "--no-llama-cpp", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = {r["impl"]: r for r in results["rows"]}
    fp32, int8, int4 = rows["visualrwkv"], rows["visualrwkv-int8"], rows["visualrwkv-int4"]
    # the large matrices' codes and fp16 scales (one per 32 weights): 8.5 and 4.5 bits a weight where fp32 takes 32
    model = RWKV(RWKVConfig(n_embd=64, n_layer=2, vocab_size=300))
    large = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) + 64  # + one row
    assert int8["weight_bytes_per_token"] == fp32["weight_bytes_per_token"] - large * (32 - 8.5) / 8
    assert int4["weight_bytes_per_token"] == fp32["weight_bytes_per_token"] - large * (32 - 4.5) / 8
    accuracy = {r["impl"]: r for r in results["accuracy"]}
    assert accuracy["visualrwkv"]["max_abs_diff"] == 0 and accuracy["visualrwkv"]["greedy_agreement"] == 1
    assert 0 < accuracy["visualrwkv-int8"]["mean_abs_diff"] < accuracy["visualrwkv-int4"]["mean_abs_diff"]
    assert accuracy["visualrwkv-int8"]["steps"] == 8


def test_llama_cpp_peer_is_the_same_model(tmp_path):
    """Where llama-cpp-python is installed (it is not a dependency): its F32 run of our weights, written as
    GGUF, gives our logits, and its quantizer keeps the LoRA, mix and 1-D tensors F32."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    out = tmp_path / "lm.json"
    assert main(["bench", "lm", "--configs", "64x2", "--prompt", "20", "--decode-steps", "2", "--repeats", "1",
                 "--vocab", "300", "--batch", "1", "--dtypes", "int8", "--accuracy-steps", "8",
                 "--bandwidth-buffer-mib", "8", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    from visualrwkv.bench.llama_peer import AMX_NOTE

    assert set(results["notes"]) <= {AMX_NOTE}  # nothing skipped or dropped (the AMX note says how it ran)
    accuracy = {r["impl"]: r for r in results["accuracy"]}
    assert accuracy["llama.cpp-F32"]["max_abs_diff"] < 1e-3
    assert accuracy["llama.cpp-Q8_0"]["mean_abs_diff"] > 0
    rows = {r["impl"]: r for r in results["rows"]}
    assert rows["visualrwkv-int8"]["peer"] == "llama.cpp-Q8_0" and rows["llama.cpp-Q8_0"]["decode_tok_s"] > 0


def test_each_implementation_follows_the_copy_equally_often():
    impls = dict.fromkeys(["a", "b", "c"])
    rounds = [lm._rotated(impls, r) for r in range(6)]
    assert all(sorted(order) == ["a", "b", "c"] for order in rounds)  # every one, every round
    assert [order[0] for order in rounds] == ["a", "b", "c", "a", "b", "c"]
