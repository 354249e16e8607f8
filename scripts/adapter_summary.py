"""The tables of docs/training.md from a finished scripts/adapter_experiment.sh run.

    python scripts/adapter_summary.py OUT

Per question type, held-out accuracy before (the shipped model) and after each fine-tune; per method, what it
trained and what it cost: trainable parameters (counted in what the run wrote, or for full fine-tuning in the
model its trainable patterns select), the size of what it wrote, the mean time per optimizer step (the trainer's
own clock over the whole run, metrics.jsonl) and the peak resident memory of the training process
(/usr/bin/time -v).
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

from safetensors import safe_open

METHODS = (("full", "finetune"), ("lora", "finetune-lora"), ("state", "finetune-state"))


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def full_trainable(final: Path) -> int:
    """Elements of the saved model's tensors that the run's `trainable` patterns select."""
    patterns = json.loads((final / "train_config.json").read_text())["trainable"]
    total = 0
    for weights in sorted(final.glob("*.safetensors")):
        with safe_open(str(weights), "pt") as f:
            total += sum(_prod(f.get_slice(k).get_shape()) for k in f.keys()
                         if any(fnmatch.fnmatchcase(k, p) for p in patterns))
    return total


def model_elements(final: Path) -> int:
    total = 0
    for weights in sorted(final.glob("*.safetensors")):
        with safe_open(str(weights), "pt") as f:
            total += sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def cost(out: Path, method: str, run: str) -> dict:
    final = out / run / "final"
    if method == "lora":
        written = [final / "adapter_model.safetensors", final / "adapter_config.json"]
        trainable = sum(_prod_file(final / "adapter_model.safetensors"))
    elif method == "state":
        written = [final / "state.safetensors"]
        trainable = sum(_prod_file(final / "state.safetensors"))
    else:
        written = [p for p in final.iterdir() if p.is_file() and p.name != "heldout.json"]
        trainable = full_trainable(final)
    records = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = records[-1]
    timing = (out / f"{run}.time").read_text()
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", timing).group(1)
    return {"trainable": trainable, "bytes": sum(p.stat().st_size for p in written), "steps": last["step"],
            "step_s": last["elapsed_s"] / last["step"], "peak_mib": peak_kb / 1024, "wall": wall}


def _prod_file(path: Path):
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            yield _prod(f.get_slice(k).get_shape())


def main(out: str) -> None:
    out = Path(out)
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in ("base", "full", "lora", "state")}
    types = sorted(t for t in results["base"]["per_type"] if t != "all")
    print("| question type | shipped model | full fine-tune | LoRA | state tuning |")
    print("|---|---|---|---|---|")

    def pct(result, kind):
        r = result["per_type"].get(kind)
        return f"{100 * r['accuracy']:.1f}%" if r else "–"

    for kind in types:
        print(f"| {kind} | " + " | ".join(pct(results[n], kind) for n in ("base", "full", "lora", "state")) + " |")
    for label, keep in (("old types (mean)", lambda t: t != "corner"), ("all", lambda t: True)):
        row = []
        for n in ("base", "full", "lora", "state"):
            per = results[n]["per_type"]
            chosen = [per[t] for t in types if keep(t)]
            row.append(f"{100 * sum(r['correct'] for r in chosen) / sum(r['total'] for r in chosen):.1f}%")
        print(f"| {label} | " + " | ".join(row) + " |")
    print()
    base_params = model_elements(out / "finetune" / "final")
    print(f"| method | trainable parameters | written | steps | time per step | peak memory (RSS) | wall |")
    print("|---|---|---|---|---|---|---|")
    for method, run in METHODS:
        c = cost(out, method, run)
        print(f"| {method} | {c['trainable']:,} ({100 * c['trainable'] / base_params:.2f}% of {base_params:,}) | "
              f"{c['bytes'] / 1024:,.0f} KiB | {c['steps']} | {c['step_s']:.2f} s | {c['peak_mib']:,.0f} MiB | "
              f"{c['wall']} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/adapter_summary.py OUT (the folder scripts/adapter_experiment.sh wrote)")
    main(sys.argv[1])
