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
from safetensors.torch import save_file

from ..rwkv.checkpoint import read_state_dict
from ..utils import atomic_write, current_umask, disk_full_error, why_missing

STEP_DIR = re.compile(r"^step-(\d{8})$")
TEMPORARY_PREFIX = ".tmp-step-"


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
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=TEMPORARY_PREFIX))
    writing = tmp
    try:
        writing = final / "trainable.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        writing = final / "optimizer.pt"
        with open(tmp / "optimizer.pt", "wb") as f:  # a file object: a full disk surfaces as its OSError
            torch.save(resume_state, f)
        writing = final / "train_config.json"
        (tmp / "train_config.json").write_text(json.dumps(config, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, 0o666 & ~current_umask())  # safetensors writes 0600
        os.chmod(tmp, 0o777 & ~current_umask())  # and mkdtemp makes 0700: no modes for a result folder
        if final.exists():  # the same step saved again (e.g. final == periodic): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full_error(e, writing)
        if full is not None:
            raise full from e
        raise
    for old in list_checkpoints(out_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted write left in `out_dir` (a killed save's `.tmp-step-*` folder, an
    atomic write's `.NAME.*.tmp` file); returns what was removed. Only for the one process that writes there."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    stale = [p for p in out_dir.iterdir()
             if (p.name.startswith(TEMPORARY_PREFIX) and p.is_dir() and not p.is_symlink())
             or (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file())]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def truncate_metrics(path: str | os.PathLike, step: int) -> None:
    """Keep the lines of metrics.jsonl up to `step` (where a resumed run goes on from), so that every
    step is logged once however often the run is resumed; a torn last line goes too."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and isinstance(record.get("step"), int) \
                and record["step"] <= step:
            kept.append(line)
    if kept != lines:
        with atomic_write(path, "w") as f:
            f.writelines(kept)


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
    return read_state_dict(path / "trainable.safetensors"), torch.load(path / "optimizer.pt", weights_only=True)


def is_step_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return all((path / name).is_file() for name in ("trainable.safetensors", "train_config.json"))


def load_step_model(path: str | os.PathLike):
    """The model a step folder stands for: the run's starting model (its `init`, or its `model`
    config initialised from its seed, as the trainer does) with the folder's trained parameters on top."""
    from .config import TrainConfig
    from .trainer import build_model

    path = Path(path)
    try:
        cfg = TrainConfig.from_dict(json.loads((path / "train_config.json").read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path / 'train_config.json'}: not a training config ({e})") from None
    if cfg.init and not os.path.exists(cfg.init):
        raise FileNotFoundError(f"{path} holds only the trained parameters; the rest comes from the run's init "
                                f"{cfg.init}, which {why_missing(cfg.init)} (run from the folder the training ran in)")
    torch.manual_seed(cfg.seed)  # a new model's frozen parameters are its seeded initialisation
    model = build_model(cfg, "cpu")
    from ..adapters.training import for_inference, setup_trainable

    setup_trainable(model, cfg)  # a LoRA or state-tuning run's step: its adapter's parameters exist
    trained = read_state_dict(path / "trainable.safetensors")
    own = model.state_dict()
    wrong = sorted(k for k, v in trained.items() if k not in own or own[k].shape != v.shape)
    if wrong:
        raise ValueError(f"{path}: trained parameters that do not fit the run's model: {wrong[:5]}")
    model.load_state_dict(trained, strict=False)
    return for_inference(model).eval()
