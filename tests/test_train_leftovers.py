"""Training leaves nothing behind and logs each step once: stale temporaries are removed on the
next start, metrics.jsonl has one line per step after any number of resumes, and step folders
are models (`ask --model`, `convert`) with normal permissions."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visualrwkv.data.shapes import generate_shapes_dataset
from visualrwkv.model import VisualRWKV
from visualrwkv.train.checkpoint import TEMPORARY_PREFIX, truncate_metrics
from visualrwkv.train.config import TrainConfig
from visualrwkv.train.trainer import Trainer
from visualrwkv.utils import current_umask

MODEL = {
    "rwkv": {"n_embd": 64, "n_layer": 1, "vocab_size": 65536},
    "vision": {"kind": "tiny", "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_layers": 1,
                                         "num_heads": 2}},
    "ctx_len": 128,
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes_dataset(out, num_train_images=4, num_test_images=1, image_size=32, seed=1)
    return out


def config(shapes, out_dir, **kw) -> TrainConfig:
    # the embedding and the vision tower stay frozen: a step folder must bring them back from the seed
    base = dict(data=str(shapes / "stage2.json"), model=MODEL, ctx_len=128, micro_batch_size=2, max_steps=6,
                save_every=2, keep_last=2, log_every=1, lr=3e-3, progress=False, length_grouping=False,
                out_dir=str(out_dir), trainable=["rwkv.blocks.*", "rwkv.ln_out.*", "rwkv.head.*", "proj.*"])
    base.update(kw)
    return TrainConfig.from_dict(base)


def logged_steps(out_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def test_metrics_have_one_line_per_step_after_any_number_of_resumes(shapes, tmp_path):
    out = tmp_path / "run"
    cfg = config(shapes, out)
    Trainer(cfg, log=lambda *a: None).train()
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6]
    for _ in range(2):
        # as if killed after step 6 was logged but before its checkpoint landed: resumes from step 4
        shutil.rmtree(out / "step-00000006")
        shutil.rmtree(out / "final")
        with open(out / "metrics.jsonl", "a") as f:
            f.write('{"step": 7, "lo')  # a torn last line
        messages = []
        Trainer(cfg, log=messages.append).train()
        assert any("resumed from" in m and "step 4" in m for m in messages)
        assert logged_steps(out) == [1, 2, 3, 4, 5, 6]
    # a start from scratch (no checkpoint) logs from step 1 again
    for step_dir in out.glob("step-*"):
        shutil.rmtree(step_dir)
    Trainer(config(shapes, out, max_steps=2, save_every=0), log=lambda *a: None).train()
    assert logged_steps(out) == [1, 2]


def test_truncate_metrics_keeps_whole_lines_up_to_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\nnot json\n{"step": 3}\n[4]\n{"step": 2}')
    truncate_metrics(path, 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    truncate_metrics(tmp_path / "absent.jsonl", 3)  # nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_temporaries_of_an_interrupted_write_are_removed_on_the_next_start(shapes, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # what a save killed half-way leaves: a hidden step folder, an atomic write's temporary file
    torn = Path(tempfile.mkdtemp(dir=out, prefix=TEMPORARY_PREFIX))
    (torn / "trainable.safetensors").write_bytes(b"\0" * 100)
    torn_file = out / ".train_config.json.abc123.tmp"
    torn_file.write_text("{")
    (out / "final").mkdir()
    torn_final = out / "final" / ".model.safetensors.xyz.tmp"
    torn_final.write_bytes(b"\0" * 10)
    keep = out / "notes.txt"  # anything else is the user's
    keep.write_text("mine")
    messages = []
    Trainer(config(shapes, out, max_steps=1), log=messages.append)
    assert not torn.exists() and not torn_file.exists() and not torn_final.exists()
    assert keep.read_text() == "mine"
    assert sum("left by an interrupted write" in m for m in messages) == 3


def test_step_folders_are_models_with_normal_permissions(shapes, tmp_path):
    out = tmp_path / "run"
    Trainer(config(shapes, out), log=lambda *a: None).train()
    step = out / "step-00000006"
    dir_mode, file_mode = 0o777 & ~current_umask(), 0o666 & ~current_umask()
    for folder in (step, out / "step-00000004", out / "final"):
        assert stat.S_IMODE(folder.stat().st_mode) == dir_mode, folder
        for f in folder.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == file_mode, f
    # the step folder is the final model: trained parameters on top of the seeded frozen ones
    final = load_file(str(out / "final" / "model.safetensors"))
    loaded = VisualRWKV.from_pretrained(step).state_dict()
    assert set(final) <= set(loaded)
    for k, v in final.items():
        assert torch.equal(loaded[k], v), k
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ask = [sys.executable, "-m", "visualrwkv.cli", "ask", "hi", "--temperature", "0", "--max-tokens", "3"]
    from_step = subprocess.run(ask + ["--model", str(step)], capture_output=True, text=True, timeout=240, env=env)
    from_final = subprocess.run(ask + ["--model", str(out / "final")], capture_output=True, text=True, timeout=240,
                                env=env)
    assert from_step.returncode == 0, from_step.stderr
    assert from_step.stdout == from_final.stdout
    converted = subprocess.run([sys.executable, "-m", "visualrwkv.cli", "convert", str(step), str(tmp_path / "model")],
                               capture_output=True, text=True, timeout=240)
    assert converted.returncode == 0, converted.stderr
    assert set(load_file(str(tmp_path / "model" / "model.safetensors"))) == set(final)


def test_a_step_folder_whose_init_is_gone_says_so(shapes, tmp_path):
    first = tmp_path / "first"
    Trainer(config(shapes, first, max_steps=1, save_every=0), log=lambda *a: None).train()
    second = tmp_path / "second"
    Trainer(config(shapes, second, max_steps=2, save_every=2, model={}, init=str(first / "final")),
            log=lambda *a: None).train()
    shutil.rmtree(first)
    with pytest.raises(FileNotFoundError, match=r"step-00000002 holds only the trained parameters; .* which does "
                                                r"not exist"):
        VisualRWKV.from_pretrained(second / "step-00000002")
