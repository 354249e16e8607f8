"""The sizes of the ablation runs and the training configs of one arm: the trainer's own `TrainConfig`s.

Every run of a study shares the data (the harder shapes variant, generated once) and a tiny vision
encoder pretrained once on it and frozen: what the seed changes is the language model's and the
projector's initialisation and the order of the data. The arms then differ in one factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..train.config import TINY_TRAINABLE, TrainConfig


@dataclass(frozen=True)
class Recipe:
    train_images: int  # each gives one caption and `questions_per_image` questions
    test_images: int  # the held-out split (3 questions each)
    vision_steps: int  # tiny-encoder pretraining, batch 64, once for the whole study
    steps: int  # optimizer steps of the question stage
    caption_steps: int  # the caption stage of the two-stage arm
    batch: int
    lr: float
    width: int = 64
    layers: int = 4  # multidirectional scanning needs 4 to cycle through its four orders
    head_size: int = 32
    image_size: int = 64
    patch_size: int = 8  # an 8 × 8 grid of 64 patch tokens: enough order for scanning to matter
    ctx_len: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES = {
    # `--study all --seeds 3` is 10 distinct arms × 3 seeds. Steps: on this data 200 gave 29.7% held-out,
    # 300 gave 35.0% (the majority-answer baseline is 33.7%), 400 gave 46.3%: fewer would compare
    # models that learned nothing. About 4 min a run on a free core, so some 2 hours in all.
    "default": Recipe(train_images=3000, test_images=100, vision_steps=600, steps=450, caption_steps=90, batch=16,
                      lr=2e-3),
    # a few steps on a few images: checks the machinery (tests), not the numbers
    "smoke": Recipe(train_images=24, test_images=2, vision_steps=2, steps=2, caption_steps=1, batch=4, lr=1e-3,
                    width=32, head_size=32, patch_size=16),
}


def model_config(recipe: Recipe, factors: dict, vision_dir: Path) -> dict:
    """A new VisualRWKV's config (train's `model` option) for these factors; the encoder loaded from
    `vision_dir`."""
    rwkv = {"n_embd": recipe.width, "n_layer": recipe.layers, "head_size": recipe.head_size}
    if factors["decay"] == "rwkv7":
        rwkv["version"] = 7
    elif factors["decay"] == "static":
        rwkv["static_decay"] = True
    return {"rwkv": rwkv, "vision": {"kind": "tiny", "path": str(vision_dir)}, "projector": "linear",
            "scanning": factors["scanning"], "image_position": factors["position"], "ctx_len": recipe.ctx_len}


def vision_config(recipe: Recipe, data_dir: Path, out_dir: Path) -> TrainConfig:
    """Stage 0: the tiny encoder pretrained on the scenes (seed 0, shared by every run)."""
    vision = {"kind": "tiny", "tiny": {"image_size": recipe.image_size, "patch_size": recipe.patch_size,
                                       "hidden_size": 64, "num_layers": 2, "num_heads": 4}}
    model = {"rwkv": {"n_embd": recipe.width, "n_layer": 1, "head_size": recipe.head_size}, "vision": vision}
    return TrainConfig(task="vision_shapes", data=str(data_dir / "stage1.json"), model=model, lr=2e-3,
                       micro_batch_size=64, max_steps=recipe.vision_steps,
                       log_every=max(1, recipe.vision_steps // 3), out_dir=str(out_dir), seed=0)


def stage_configs(recipe: Recipe, factors: dict, seed: int, data_dir: Path, vision_dir: Path,
                  run_dir: Path) -> list[TrainConfig]:
    """The training stages of one run; the last one is evaluated on the held-out split."""
    common = dict(trainable=TINY_TRAINABLE, ctx_len=recipe.ctx_len, micro_batch_size=recipe.batch, l2wrap=False,
                  seed=seed, progress=False, loss_reduction=factors["loss"])
    model = model_config(recipe, factors, vision_dir)
    data = [data_dir / "stage2.json"] + ([data_dir / "stage1.json"] if factors["mix"] == "questions+captions" else [])
    questions = TrainConfig(data=",".join(map(str, data)), image_position=factors["position"], lr=recipe.lr,
                            lr_final=recipe.lr / 10, warmup_steps=min(10, recipe.steps // 10),
                            max_steps=recipe.steps, log_every=max(1, recipe.steps // 4),
                            save_every=max(1, recipe.steps // 2), eval_heldout=str(data_dir / "test.json"),
                            out_dir=str(run_dir / "questions"), model=model, **common)
    if factors["stages"] == 1:
        return [questions]
    # the paper's stage 1: captions with the image first; here the LM is new, so it trains what
    # stage 2 trains (as the tiny preset does), and the question stage starts from its result
    captions = TrainConfig(data=str(data_dir / "stage1.json"), image_position="first", lr=recipe.lr,
                           lr_final=recipe.lr / 5, warmup_steps=min(10, recipe.caption_steps // 10),
                           max_steps=recipe.caption_steps, log_every=max(1, recipe.caption_steps // 2),
                           out_dir=str(run_dir / "captions"), model=dict(model), **common)
    questions.model, questions.init = {}, str(run_dir / "captions" / "final")
    return [captions, questions]
