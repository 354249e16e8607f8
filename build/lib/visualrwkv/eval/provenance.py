"""What produced a predictions file, so that a resumed `eval run` never mixes two runs' answers.

`eval run` writes one provenance record as the first line of predictions.jsonl, `{"provenance": {...}}`, before
any answer line; `read_predictions` skips it, so the rest stays a LLaVA-style answer file (LLaVA's own scripts
read every line as an answer: drop the first line for them). On resume the recorded run must be this run: same
task, split, prompt style, model (a fingerprint of its config and weights, wherever it was loaded from), dtype,
decoding and answer length; otherwise the run refuses with one line, or starts over with `--restart`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from visualrwkv import __version__

RECORD_KEY = "provenance"
# Recorded for the reader but not compared: the same weights loaded from another path are the same model, and a
# new package version alone does not change the answers.
INFORMATIONAL = ("model_path", "visualrwkv")
_SAMPLES_PER_TENSOR = 4096


def model_fingerprint(model) -> str:
    """sha256 (16 hex digits) of the model's config and of a fixed sample of every tensor's values.

    A sample instead of every byte keeps it cheap for a 7B model; two different trainings differ almost
    everywhere, so a sample of each tensor tells them apart. The values are hashed as float32, in a layout-free
    way (rows picked with `index_select`), so the inference memory layout does not change it.
    """
    import torch

    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            if tensor.numel() == 0:
                continue
            t = tensor.detach()
            if t.dim() > 1:  # a few whole rows first, so that a large matrix is never copied
                t = t.index_select(0, _spread(t.shape[0], 64, t.device))
            t = t.reshape(-1)
            digest.update(t[_spread(t.numel(), _SAMPLES_PER_TENSOR, t.device)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _spread(n: int, k: int, device):
    """min(n, k) indices spread evenly over range(n), first and last included (integer arithmetic: exact)."""
    import torch

    k = min(n, k)
    return torch.arange(k, device=device) * (n - 1) // max(k - 1, 1)


def run_provenance(model, *, task: str, split: str, prompt: str, max_new_tokens: int,
                   model_path: str | None, imageless: str = "text-only") -> dict:
    """The record for an `eval run` answering `task` with `model` (greedy decoding)."""
    dtype = next((p.dtype for p in model.parameters()), None)
    return {
        "task": task,
        "split": split,
        "prompt": prompt,
        "model": model_fingerprint(model),
        "dtype": str(dtype).removeprefix("torch."),
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "imageless": imageless,
        "model_path": model_path or "(default)",
        "visualrwkv": __version__,
    }


def provenance_line(provenance: dict) -> str:
    return json.dumps({RECORD_KEY: provenance}, ensure_ascii=False) + "\n"


def is_provenance_record(obj) -> bool:
    return isinstance(obj, dict) and RECORD_KEY in obj and "question_id" not in obj


def differences(recorded: dict, current: dict) -> list[str]:
    """`key recorded-value -> current-value` for every compared key that differs."""
    keys = sorted((set(recorded) | set(current)) - set(INFORMATIONAL))
    return [f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys if recorded.get(k) != current.get(k)]
