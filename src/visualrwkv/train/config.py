"""Training configuration: one dataclass, named presets (SPEC §8), `--key value` overrides."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PRECISIONS = ("fp32", "bf16")
DISTRIBUTED = ("ddp", "fsdp")
LM_STAGE2 = ["rwkv.blocks.*", "rwkv.ln_out.*", "rwkv.head.*", "proj.*"]


@dataclass
class TrainConfig:
    task: str = "vlm"  # "vlm": train VisualRWKV on conversations; "vision_shapes": pretrain the tiny encoder
    # data (LLaVA conversation JSON / JSONL)
    data: str = ""
    image_root: str = ""  # image paths are relative to this (default: the data file's folder)
    image_position: str = "middle"  # first | last | middle (sandwich)
    ctx_len: int = 2048
    max_rounds: int = 0  # > 0: split long conversations into chunks of this many rounds (SPEC §8.4)
    skip_bad_rows: bool = False  # False: a bad row is an error naming it; True: skip, count, report
    num_workers: int = 0
    length_grouping: bool = True
    prepare: str = ""  # "shapes": generate the synthetic shapes dataset into data's folder if it is missing
    prepare_images: int = 6000

    # model
    init: str = ""  # start from this model (our directory or an official .pth)
    init_lm: str = ""  # or build a new model from `model` and load this base RWKV-6 .pth into its LM
    model: dict = field(default_factory=dict)  # VisualRWKVConfig fields, for a new model
    trainable: list = field(default_factory=lambda: ["*"])  # fnmatch patterns over parameter names
    grad_checkpointing: bool = False

    # optimisation (AdamW; cosine from lr to lr_final after a linear warm-up, on every group)
    lr: float = 1e-3
    lr_final: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    micro_batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 1.0  # true passes over the data
    max_steps: int = 0  # > 0 overrides epochs (optimizer steps)
    l2wrap: bool = True
    precision: str = "fp32"
    distributed: str = "ddp"  # under torchrun: ddp or fsdp
    seed: int = 0

    # output
    eval_heldout: str = ""  # after training: exact-match accuracy per question_type on this LLaVA QA file
    out_dir: str = "runs/train"
    save_every: int = 0  # optimizer steps between checkpoints (0: only the final one)
    keep_last: int = 2
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.image_position not in ("first", "last", "middle"):
            raise ValueError(f"image_position must be first, last or middle, got {self.image_position!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        for name in ("ctx_len", "micro_batch_size", "grad_accum"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.lr_final < 0:
            raise ValueError("lr must be positive and lr_final non-negative")
        if self.task not in ("vlm", "vision_shapes"):
            raise ValueError(f"task must be 'vlm' or 'vision_shapes', got {self.task!r}")
        if self.prepare not in ("", "shapes"):
            raise ValueError(f"prepare must be '' or 'shapes', got {self.prepare!r}")
        if not isinstance(self.trainable, list) or not self.trainable:
            raise ValueError("trainable must be a non-empty list of parameter-name patterns")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**d)


TINY_MODEL = {
    "rwkv": {"n_embd": 128, "n_layer": 4, "vocab_size": 65536},
    "vision": {"kind": "tiny", "tiny": {"image_size": 64, "patch_size": 16, "hidden_size": 128, "num_layers": 2,
                                         "num_heads": 4}},
    "projector": "linear",
    "scanning": "bidirection",
    "image_position": "middle",
    "ctx_len": 256,
}
TINY_TRAINABLE = ["rwkv.blocks.*", "rwkv.ln_out.*", "rwkv.head.*", "proj.*"]


def presets(out_dir: str = "runs") -> dict[str, list[dict]]:
    """Named recipes; each is a list of stages (each stage starts from the previous one's result)."""
    tiny_data = os.path.join(out_dir, "tiny", "data")
    return {
        # the paper's v6.0 recipe (SPEC §8.1/8.2); set data/image_root/init_lm for your run
        "stage1": [dict(image_position="first", ctx_len=1024, trainable=["proj.*"], lr=1e-3, lr_final=1e-5,
                        micro_batch_size=16, grad_accum=16, epochs=1, out_dir=os.path.join(out_dir, "stage1"))],
        "stage2": [dict(image_position="middle", ctx_len=2048, trainable=LM_STAGE2, lr=6e-5, lr_final=1e-5,
                        micro_batch_size=8, grad_accum=16, epochs=2, grad_checkpointing=True,
                        out_dir=os.path.join(out_dir, "stage2"))],
        # the embedded default, from scratch on generated shapes in about 15 minutes on 2 CPU cores:
        # stage 0 pretrains the tiny vision encoder on the generator's labels (the role CLIP's own
        # pretraining plays for the real model), stage 1 aligns on captions (image first), stage 2
        # tunes on questions (sandwich). Nothing is pretrained, so stages 1 and 2 train the LM blocks,
        # head and projector; the embedding stays at its random init (frozen, as in the real stage 2),
        # and so does the pretrained vision encoder.
        "tiny": [
            dict(task="vision_shapes", data=os.path.join(tiny_data, "stage1.json"), prepare="shapes",
                 model=TINY_MODEL, lr=2e-3, micro_batch_size=64, max_steps=1200, log_every=200,
                 out_dir=os.path.join(out_dir, "tiny", "stage0")),
            dict(data=os.path.join(tiny_data, "stage1.json"), prepare="shapes", image_position="first", ctx_len=256,
                 trainable=TINY_TRAINABLE, lr=1e-3, lr_final=2e-4, warmup_steps=20, micro_batch_size=32,
                 max_steps=180, l2wrap=False, out_dir=os.path.join(out_dir, "tiny", "stage1"), log_every=20),
            dict(data=os.path.join(tiny_data, "stage2.json"), prepare="shapes", image_position="middle",
                 ctx_len=256, trainable=TINY_TRAINABLE, lr=1e-3, lr_final=5e-5, warmup_steps=20,
                 micro_batch_size=32, max_steps=1350, l2wrap=False, out_dir=os.path.join(out_dir, "tiny", "stage2"),
                 log_every=20, eval_heldout=os.path.join(tiny_data, "test.json")),
        ],
    }


def _coerce(value: str, current):
    """A command-line string as the type of the option's current value."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(current, (list, dict)):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = [v for v in value.split(",") if v] if isinstance(current, list) else None
        if not isinstance(parsed, type(current)):
            raise ValueError(f"expected JSON {type(current).__name__}, got {value!r}")
        return parsed
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """["--lr", "1e-4", "--trainable", "proj.*"] → {"lr": "1e-4", ...} (strings; coerced later)."""
    out, i = {}, 0
    while i < len(pairs):
        key = pairs[i]
        if not key.startswith("--"):
            raise ValueError(f"expected --key value, got {key!r}")
        key = key[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(pairs):
            value = pairs[i + 1]
            i += 2
        else:
            raise ValueError(f"--{key} needs a value")
        out[key] = value
    return out


def resolve(config: str, overrides: dict[str, str], runs_dir: str = "runs") -> list[TrainConfig]:
    """A preset name or a JSON file (one config, or {"stages": [...]}) plus overrides → stage configs."""
    table = presets(runs_dir)
    if config in table:
        stages = [dict(s) for s in table[config]]
    else:
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"--config {config!r} is neither a preset ({', '.join(table)}) nor a file")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
        stages = data["stages"] if isinstance(data, dict) and "stages" in data else [data]
    defaults = TrainConfig()
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown training options: {sorted('--' + k for k in unknown)}")
    resolved = []
    for i, stage in enumerate(stages):
        merged = dict(stage)
        for key, value in overrides.items():
            merged[key] = _coerce(value, merged.get(key, getattr(defaults, key)))
        if len(stages) > 1 and "out_dir" in overrides:  # one folder per stage under the given one
            merged["out_dir"] = os.path.join(merged["out_dir"], f"stage{i}")
        resolved.append(TrainConfig.from_dict(merged))
    return resolved
