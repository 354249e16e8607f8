"""`visualrwkv bench lm`: the CI smoke run at tiny size (files and fields, never timings)."""

import json

import pytest
import torch

from visualrwkv.bench.lm import copy_bandwidth, weight_bytes_per_token
from visualrwkv.cli import main
from visualrwkv.rwkv.model import RWKV, RWKVConfig


def test_quick_lm_bench_through_the_cli(tmp_path, capsys):
    out = tmp_path / "lm.json"
    assert main(["bench", "lm", "--configs", "64x2", "--prompt", "20", "--decode-steps", "2", "--repeats", "1",
                 "--vocab", "300", "--batch", "3", "--bf16", "--compile", "--bandwidth-buffer-mib", "8",
                 "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    rows = {r["impl"]: r for r in results["rows"]}
    assert set(rows) == {"visualrwkv", "visualrwkv-bf16", "visualrwkv-compile", "rwkv-0.8"}
    for row in rows.values():
        assert (row["n_embd"], row["n_layer"], row["prompt_tokens"]) == (64, 2, 20)
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0
    ours, bf16 = rows["visualrwkv"], rows["visualrwkv-bf16"]
    assert ours["weight_bytes_per_token"] == 2 * bf16["weight_bytes_per_token"]
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
    assert weight_bytes_per_token(model.to(torch.bfloat16)) == fp32 // 2  # (Module.to converts in place)


def test_copy_bandwidth_is_a_rate():
    assert 1e8 < copy_bandwidth(4 << 20, repeats=3) < 1e13


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
