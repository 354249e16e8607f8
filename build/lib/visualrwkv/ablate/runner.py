"""Running the studies: shared data and encoder once, then every (arm, seed) run, resumably.

Layout of --out DIR:
    recipe.json            the sizes the study was started with (a resumed study must use the same)
    data/                  the harder shapes variant (train, held-out test)
    vision/                the pretrained tiny encoder every run loads (frozen)
    runs/RUN_ID/           a run in progress (the trainer's checkpoints: a killed run resumes there)
    results/RUN_ID.json    a finished run: held-out accuracy per question type; written atomically,
                           and a run whose result exists is never trained again
A run id is the arm's factors and the seed, so arms shared by several studies run once.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from ..utils import atomic_write
from .recipe import RECIPES, Recipe, stage_configs, vision_config
from .studies import Arm, Study, distinct_arms


def log(message: str) -> None:
    print(f"[ablate] {message}", file=sys.stderr, flush=True)


def run_id(arm: Arm, seed: int) -> str:
    return f"{arm.key}-seed{seed}"


def check_recipe(out: Path, name: str) -> Recipe:
    """The recipe, recorded in out/recipe.json on the first start; a resumed study must match it."""
    recipe = RECIPES[name]
    path = out / "recipe.json"
    wanted = {"name": name, **recipe.to_dict()}
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            raise ValueError(f"{out} holds a study run with recipe {found.get('name')!r} and other sizes; "
                             "use another --out (or the same --recipe)")
    else:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(wanted, f, indent=1)
    return recipe


def prepare(out: Path, recipe: Recipe) -> tuple[Path, Path]:
    """The shared data and the pretrained encoder, made once (each finished step is kept)."""
    from ..data.shapes import HARDER, generate_shapes_dataset

    data, vision = out / "data", out / "vision"
    if not (data / "scenes.json").is_file():  # scenes.json is the generator's last file
        log(f"generating the harder shapes data into {data}")
        generate_shapes_dataset(data, num_train_images=recipe.train_images, num_test_images=recipe.test_images,
                                image_size=recipe.image_size, **HARDER)
    if not (vision / "model.safetensors").is_file():
        from ..model import VisualRWKV
        from ..train.vision_pretrain import pretrain_tiny_vision

        log(f"pretraining the tiny vision encoder ({recipe.vision_steps} steps) into {vision}")
        cfg = vision_config(recipe, data, out / "vision-pretrain")
        final = pretrain_tiny_vision(cfg, log=lambda m: log("  " + m))
        VisualRWKV.from_pretrained(final).vit.save_pretrained(vision)
        shutil.rmtree(out / "vision-pretrain", ignore_errors=True)
    return data, vision


def train_and_evaluate(arm: Arm, seed: int, recipe: Recipe, data: Path, vision: Path, run_dir: Path) -> dict:
    """One run through the trainer (each stage resumes from its own checkpoints); its result record."""
    from ..train.trainer import Trainer

    t0 = time.perf_counter()
    final = None
    stages = stage_configs(recipe, arm.factors, seed, data, vision, run_dir)
    for cfg in stages:
        final = Trainer(cfg, log=lambda m: log("  " + m)).train()
    heldout = json.loads((final / "heldout.json").read_text())
    metrics = [json.loads(line) for line in (Path(stages[-1].out_dir) / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    return {"run_id": run_id(arm, seed), "arm_key": arm.key, "factors": arm.factors, "seed": seed,
            "accuracy": heldout["accuracy"], "total": heldout["total"], "per_type": heldout["per_type"],
            "final_loss": metrics[-1]["loss"] if metrics else None,
            "loss_curve": [[m["step"], m["loss"]] for m in metrics],
            "steps": [cfg.max_steps for cfg in stages], "seconds": round(time.perf_counter() - t0, 1)}


def run_studies(studies: list[Study], seeds: int, out: Path, recipe_name: str = "default",
                keep_runs: bool = False) -> list[dict]:
    """Train and evaluate every run the studies need that has no result yet; returns all results."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    recipe = check_recipe(out, recipe_name)
    data, vision = prepare(out, recipe)
    results_dir = out / "results"
    results_dir.mkdir(exist_ok=True)
    # seed-major: a study stopped early has every arm at the same number of seeds
    todo = [(arm, seed) for seed in range(seeds) for arm in distinct_arms(studies)]
    left = [(arm, seed) for arm, seed in todo if not (results_dir / f"{run_id(arm, seed)}.json").is_file()]
    done = len(todo) - len(left)
    log(f"{len(todo)} runs: {done} done, {len(left)} to go")
    durations: list[float] = []
    for i, (arm, seed) in enumerate(left):
        rid = run_id(arm, seed)
        eta = f", ETA {_minutes(sum(durations) / len(durations) * (len(left) - i))}" if durations else ""
        log(f"run {done + i + 1}/{len(todo)}: {rid}{eta}")
        t0 = time.perf_counter()
        result = train_and_evaluate(arm, seed, recipe, data, vision, out / "runs" / rid)
        with atomic_write(results_dir / f"{rid}.json", "w") as f:
            json.dump(result, f, indent=1)
        if not keep_runs:  # the result is what is kept: a model per run would fill the disk
            shutil.rmtree(out / "runs" / rid, ignore_errors=True)
        durations.append(time.perf_counter() - t0)
        remaining = len(left) - i - 1
        log(f"finished {rid}: held-out {100 * result['accuracy']:.1f}% in {durations[-1]:.0f} s; "
            f"{done + i + 1}/{len(todo)} done, {remaining} left"
            + (f", ETA {_minutes(sum(durations) / len(durations) * remaining)}" if remaining else ""))
    return load_results(results_dir)


def load_results(results_dir: Path) -> list[dict]:
    results = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError as e:  # atomic writes make this a hand-edited or foreign file
            raise ValueError(f"{path}: not a result file ({e}); remove it to run that arm again") from e
    return results


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
