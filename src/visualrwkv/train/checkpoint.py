"""Training checkpoints: atomic directories, the last N kept, full resume state.

A checkpoint `step-00000100/` holds `trainable.safetensors` (only the trained parameters; the
frozen ones come from the run's init), `optimizer.pt` (optimizer + scheduler + RNG + data
position, loaded with `weights_only=True`) and `train_config.json`. It is written into a hidden
temporary directory and renamed into place, so a crash leaves either no checkpoint or a whole one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d{8})$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: str | os.PathLike, step: int, trainable: dict[str, torch.Tensor], resume_state: dict,
                    config: dict, keep_last: int) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".tmp-step-"))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(resume_state, tmp / "optimizer.pt")
        (tmp / "train_config.json").write_text(json.dumps(config, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # the same step saved again (e.g. final == periodic): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(out_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.is_dir() and STEP_DIR.match(p.name)
                  and (p / "optimizer.pt").is_file() and (p / "trainable.safetensors").is_file())


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    return load_file(str(path / "trainable.safetensors")), torch.load(path / "optimizer.pt", weights_only=True)
