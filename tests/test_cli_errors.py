"""Every user-facing error of the real CLI is one line on stderr naming the problem, with rc != 0.

Each case runs `python -m visualrwkv.cli` as a subprocess, as a user would. The broken model
folders need no real model: every check runs before a model of the stated size is allocated.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from visualrwkv.engine.defaults import DEFAULT_MODEL_DIR
from visualrwkv.utils import disk_full_error

TIMEOUT = 240
TINY_CONFIG = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())


def cli(*args, cwd=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visualrwkv.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd, stdin=subprocess.DEVNULL, **kw)


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    """The error line, after checking it is the whole of stderr, names every word, and rc != 0."""
    assert done.returncode != 0, done.stdout
    err = done.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def model_dir(root, config, weights=None):
    """A folder with `config` as config.json and a small valid (or given) model.safetensors."""
    root.mkdir()
    (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights is None:
        save_file({"rwkv.emb.weight": torch.zeros(4, 2)}, str(root / "model.safetensors"))
    else:
        (root / "model.safetensors").write_bytes(weights)
    return root


def with_rwkv(**changes) -> dict:
    config = json.loads(json.dumps(TINY_CONFIG))
    config["rwkv"].update(changes)
    return config


def test_truncated_and_corrupt_safetensors(tmp_path):
    head = (DEFAULT_MODEL_DIR / "model.safetensors").read_bytes()[:100_000]
    truncated = model_dir(tmp_path / "truncated", TINY_CONFIG, head)
    one_line_error(cli("ask", "hi", "--model", truncated), "truncated/model.safetensors",
                   "not a readable safetensors file", "incomplete metadata")
    corrupt = model_dir(tmp_path / "corrupt", TINY_CONFIG, os.urandom(4096))
    one_line_error(cli("ask", "hi", "--model", corrupt), "corrupt/model.safetensors", "not a readable safetensors")


@pytest.mark.parametrize("config, words", [
    (with_rwkv(n_embd="128"), ["config.json", "RWKVConfig.n_embd must be an integer", "'128'"]),
    (with_rwkv(n_layer=10**9), ["config.json", "RWKVConfig.n_layer", "1000000000"]),
    (with_rwkv(n_layer=5000), ["config.json", "n_layer 5000 is above 1024"]),
    (with_rwkv(n_layer=True), ["RWKVConfig.n_layer must be an integer", "True"]),
    # plausible types, absurd size: refused from the weights file's header, before allocating 128 GiB
    (with_rwkv(n_embd=2**19), ["model.safetensors (with config.json) does not match", "rwkv.emb.weight"]),
    ([1, 2], ["config.json: invalid config", "must be a mapping"]),
    ("{not json", ["config.json: invalid config", "Expecting property name"]),
])
def test_config_json_with_wrong_types_or_absurd_sizes(tmp_path, config, words):
    if isinstance(config, dict) and config["rwkv"]["n_embd"] == 2**19:
        folder = tmp_path / "model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "model.safetensors").symlink_to(DEFAULT_MODEL_DIR / "model.safetensors")
    else:
        folder = model_dir(tmp_path / "model", config)
    one_line_error(cli("ask", "hi", "--model", folder), *words)


def test_a_huge_tiny_encoder_is_refused_before_it_is_built(tmp_path):
    config = json.loads(json.dumps(TINY_CONFIG))
    config["vision"]["tiny"]["num_layers"] = 10**7
    one_line_error(cli("ask", "hi", "--model", model_dir(tmp_path / "model", config)),
                   "TinyEncoderConfig.num_layers must be an int in [0, 1024]")


def test_symlink_loops_and_broken_links(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    one_line_error(cli("ask", "hi", "--model", tmp_path / "a"), "model path", "is a symlink loop")
    one_line_error(cli("ask", "hi", "--image", tmp_path / "a"), "image file", "is a symlink loop")
    one_line_error(cli("ask", "hi", "--image", tmp_path / "dangling"), "is a broken symlink", "gone")
    one_line_error(cli("train", "--config", "stage2", "--runs-dir", tmp_path, "--data", tmp_path / "a"),
                   "--data", "is a symlink loop")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda():
    one_line_error(cli("ask", "hi", "--device", "cuda"), "--device cuda: CUDA is not available", "--device cpu")
    one_line_error(cli("ask", "hi", "--device", "nonsense"), "--device 'nonsense' is not a torch device")


def test_train_without_data(tmp_path):
    one_line_error(cli("train", "--config", "stage1", "--runs-dir", tmp_path), "no training data", "--data FILE")
    one_line_error(cli("train", "--config", "stage2", "--runs-dir", tmp_path, "--data", tmp_path / "none.json"),
                   "none.json does not exist")


def test_image_errors_name_the_file_and_max_pixels_is_an_option(tmp_path):
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    err = one_line_error(cli("ask", "hi", "--image", broken), "holiday.png", "cannot decode image", "truncated")
    assert "bytes>" not in err
    broken.write_bytes(b"holiday notes, not a picture")
    one_line_error(cli("ask", "hi", "--image", broken), "holiday.png", "cannot identify image")
    big = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(big)
    one_line_error(cli("ask", "hi", "--image", big, "--max-pixels", "1000"), "big.png", "40x30 = 1200 pixels",
                   "--max-pixels")
    one_line_error(cli("ask", "hi", "--image", big, "--max-pixels", "0"), "--max-pixels must be a positive")


def test_ctrl_c_at_the_chat_prompt(tiny_vlm_dir):
    # a background job may have SIGINT ignored, which the child would inherit: give it the default
    proc = subprocess.Popen([sys.executable, "-m", "visualrwkv.cli", "chat", "--model", str(tiny_vlm_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.stdin.write("/help\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("commands:")  # the model is loaded; chat waits for a line
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=TIMEOUT)  # stdin stays open: the chat ends by the Ctrl-C, not by end of input
        err = proc.stderr.read()
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.strip() == "visualrwkv chat: interrupted"


# ---- a full disk while checkpointing ---------------------------------------------------------
def test_disk_full_errors_are_recognised_in_each_writer_s_form():
    path = "runs/x/step-00000001/optimizer.pt"
    as_os = OSError(errno.ENOSPC, "No space left on device")
    as_safetensors = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    as_torch = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    as_torch.__context__ = as_os
    for error in (as_os, as_safetensors, as_torch):
        full = disk_full_error(error, path)
        assert full.errno == errno.ENOSPC and full.strerror == f"no space left on device while writing {path}"
    assert disk_full_error(RuntimeError("unexpected pos 704 vs 598"), path) is None
    assert disk_full_error(OSError(errno.EACCES, "Permission denied"), path) is None


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and tmpfs mounts in a user namespace")
def test_disk_full_while_checkpointing(tmp_path):
    from visualrwkv.data.shapes import generate_shapes_dataset

    generate_shapes_dataset(tmp_path / "data", num_train_images=4, num_test_images=1, image_size=32, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    config = {"data": str(tmp_path / "data" / "stage2.json"), "ctx_len": 128, "micro_batch_size": 2, "max_steps": 2,
              "save_every": 1, "progress": False, "out_dir": str(out),
              "model": {"rwkv": {"n_embd": 64, "n_layer": 1, "vocab_size": 65536},
                        "vision": {"kind": "tiny", "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32,
                                                             "num_layers": 1, "num_heads": 2}}, "ctx_len": 128}}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    script = (f"mount -t tmpfs -o size=256k none {out} && "
              f"exec {sys.executable} -m visualrwkv.cli train --config {tmp_path / 'cfg.json'}")
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]  # the lines before it are the trainer's own log
    assert "Traceback" not in done.stderr, done.stderr
    assert last == f"visualrwkv train: error: no space left on device while writing {out}/step-00000001/" \
                   "trainable.safetensors", done.stderr
