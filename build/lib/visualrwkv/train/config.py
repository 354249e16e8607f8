"""Training configuration: one dataclass, named presets (SPEC §8), `--key value` overrides.

Every option carries its meaning in its field's metadata, from which `visualrwkv train --help`
builds its list (train/cli.py), so the help cannot drift from the code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from visualrwkv.prompts import MULTI_TURN_RENDERINGS

PRECISIONS = ("fp32", "bf16")
DISTRIBUTED = ("ddp", "fsdp")
LOSS_REDUCTIONS = ("sample", "token")
LM_STAGE2 = ["rwkv.blocks.*", "rwkv.ln_out.*", "rwkv.head.*", "proj.*"]
# what the `finetune` preset sets from the dataset's size and the model (see `fit_to_data`)
# the learning rate `fit` sets for LoRA, times the plain fine-tune's: adapters start at zero and move
# few parameters, so they take larger steps (measured on the shapes experiment, docs/training.md)
ADAPTER_LR_SCALE = {"": 1.0, "lora": 5.0}
# state tuning's peak learning rate, whatever the width, falling to a hundredth (RWKV-PEFT's 1 → 0.01):
# on the shapes experiment it taught the new question type to 54% where 0.1 → 0.01 reached 10%
STATE_TUNING_LR = 1.0
ADAPTERS = ("", "lora", "state")
# the default LoRA targets (adapters/lora.py), repeated to keep this module free of torch imports
LORA_TARGETS = [f"rwkv.blocks.*.att.{n}" for n in ("receptance", "key", "value", "gate", "output")] + \
    [f"rwkv.blocks.*.ffn.{n}" for n in ("key", "receptance", "value")] + ["proj", "proj.*"]
FITTED = ("micro_batch_size", "grad_accum", "epochs", "lr", "lr_final", "warmup_steps", "ctx_len", "image_position")


def opt(default=MISSING, help: str = "", *, group: str, factory=MISSING):
    """A TrainConfig field with its meaning (shown by `visualrwkv train --help`) and its help group."""
    metadata = {"help": help, "group": group}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    task: str = opt("vlm", "vlm: train VisualRWKV on conversations; vision_shapes: pretrain the tiny encoder",
                    group="data")
    data: str = opt("", "LLaVA conversation data: a JSON list or JSONL file, or several, comma-separated (their "
                    "rows trained together, in one shuffled order)", group="data")
    image_root: str = opt("", "image paths in the data are relative to this folder (empty: the data file's folder)",
                          group="data")
    image_position: str = opt("middle", "where the image goes in the prompt: first, last or middle (the "
                              "sandwich: before and after the question); v6 prompt format only (v7: images first)",
                              group="data")
    ctx_len: int = opt(2048, "longest training sequence in tokens, an image counting its tokens; longer rows "
                       "are cut", group="data")
    max_rounds: int = opt(0, "> 0: split long conversations into chunks of this many rounds", group="data")
    multi_turn: str = opt("official", "a conversation of several questions with the sandwich: official (the image "
                          "turn lists every question, as the official code trains), chat (only its own, as a "
                          "live chat renders each turn) or image-every-turn (the image again in every later "
                          "question, each with its own sandwich; the model then chats that way too)", group="data")
    skip_bad_rows: bool = opt(False, "false: a bad row stops the run with an error naming it; true: skip it, "
                              "count it, report the counts", group="data")
    num_workers: int = opt(0, "DataLoader worker processes (0: load in the training process)", group="data")
    length_grouping: bool = opt(True, "batch rows of similar length together (less padding)", group="data")
    prepare: str = opt("", "shapes: generate the synthetic shapes dataset into data's folder if it is missing",
                       group="data")
    prepare_images: int = opt(6000, "training images to generate with prepare=shapes", group="data")

    init: str = opt("", "start from this model: a model directory, an official .pth, a Hub id (org/name) or "
                    "'tiny' (the shipped model)", group="model")
    init_lm: str = opt("", "or build a new model from `model` and load this base RWKV-6 .pth into its LM",
                       group="model")
    model: dict = opt(help="VisualRWKVConfig fields (JSON), for a new model", group="model", factory=dict)
    prompt_format: str = opt("", "the prompt format the model is trained (and saved) with: v6 (image_position, one "
                             "image per sample) or v7 (images first, one <image> line each, several per sample); "
                             "empty: the model's own", group="model")
    projector: str = opt("", "a new model's projector: linear, mlp (v7.00's context gating) or hd; empty: the one "
                         "in `model`", group="model")
    trainable: list = opt(help="parameters to train: fnmatch patterns over names, comma-separated or JSON",
                          group="model", factory=lambda: ["*"])
    grad_checkpointing: bool = opt(False, "recompute activations in backward (less memory, ~30% slower)",
                                   group="model")
    adapter: str = opt("", "parameter-efficient fine-tuning, the base frozen and the result saved alone: lora "
                       "(LoRA adapters, PEFT format) or state (a trained initial state); '' trains `trainable`",
                       group="model")
    lora_targets: list = opt(help="adapter=lora: the linear layers to adapt, fnmatch patterns over module names "
                             "(default: every time-mix and channel-mix projection, RWKV-6 or -7, and the projector)",
                             group="model", factory=lambda: list(LORA_TARGETS))
    lora_rank: int = opt(8, "adapter=lora: the rank r of each adapter", group="model")
    lora_alpha: float = opt(16.0, "adapter=lora: the update is scaled by lora_alpha / lora_rank", group="model")
    lora_dropout: float = opt(0.0, "adapter=lora: dropout on the adapters' input", group="model")
    state_shifts: bool = opt(False, "adapter=state: also train the token-shift vectors, not only the WKV "
                             "matrices", group="model")

    lr: float = opt(1e-3, "peak learning rate (AdamW; linear warm-up, then cosine to lr_final)",
                    group="optimisation")
    lr_final: float = opt(1e-5, "learning rate at the last step", group="optimisation")
    warmup_steps: int = opt(0, "optimizer steps of linear warm-up from lr/10 to lr", group="optimisation")
    weight_decay: float = opt(0.0, "AdamW weight decay, on matrices only", group="optimisation")
    beta1: float = opt(0.9, "AdamW beta1", group="optimisation")
    beta2: float = opt(0.99, "AdamW beta2", group="optimisation")
    adam_eps: float = opt(1e-8, "AdamW epsilon", group="optimisation")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0: no clipping)", group="optimisation")
    micro_batch_size: int = opt(8, "rows per forward pass on each process", group="optimisation")
    grad_accum: int = opt(1, "micro-batches per optimizer step; the global batch is micro_batch_size × "
                          "grad_accum × processes", group="optimisation")
    epochs: float = opt(1.0, "passes over the data: each is every row once, in a new order (fractions allowed)",
                        group="optimisation")
    max_steps: int = opt(0, "> 0: train exactly this many optimizer steps instead of `epochs`",
                         group="optimisation")
    loss_reduction: str = opt("sample", "sample: each sample's mean cross-entropy, averaged over the global batch "
                              "(SPEC §7.6, v6.0 and v7.00); token: the mean over every answer token of the global "
                              "batch (v5.x; the paper's App. D ablation)", group="optimisation")
    l2wrap: bool = opt(True, "RWKV's L2Wrap: nudge each position's largest logit towards 0", group="optimisation")
    precision: str = opt("fp32", "fp32, or bf16 (autocast; the weights and optimizer stay fp32)",
                         group="optimisation")
    distributed: str = opt("ddp", "under torchrun: ddp (replicate the model) or fsdp (shard it)",
                           group="optimisation")
    seed: int = opt(0, "seed of the initial weights and of the data order", group="optimisation")
    fit_to_data: list = opt(help="options the trainer sets from the data's size and the model at the start "
                            f"(any of {', '.join(FITTED)}); the finetune preset fills it with those you do not set",
                            group="optimisation", factory=list)

    eval_heldout: str = opt("", "after training: exact-match accuracy per question_type on this LLaVA QA file",
                            group="output")
    out_dir: str = opt("runs/train", "where checkpoints, metrics.jsonl and the final model (out_dir/final) go",
                       group="output")
    save_every: int = opt(0, "optimizer steps between resumable checkpoints (0: only the final one)",
                          group="output")
    keep_last: int = opt(2, "checkpoints to keep", group="output")
    log_every: int = opt(10, "optimizer steps between lines in metrics.jsonl (and on screen without progress)",
                         group="output")
    tensorboard: bool = opt(False, "also log to TensorBoard in out_dir/tensorboard", group="output")
    progress: bool = opt(True, "progress bars (false: a log line every log_every steps instead)", group="output")

    def __post_init__(self):
        if self.image_position not in ("first", "last", "middle"):
            raise ValueError(f"image_position must be first, last or middle, got {self.image_position!r}")
        if self.prompt_format not in ("", "v6", "v7"):
            raise ValueError(f"prompt_format must be v6, v7 or empty (the model's own), got {self.prompt_format!r}")
        if self.projector not in ("", "linear", "mlp", "hd"):
            raise ValueError(f"projector must be linear, mlp, hd or empty (the model's own), got {self.projector!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        for name in ("ctx_len", "micro_batch_size", "grad_accum"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.lr_final < 0:
            raise ValueError("lr must be positive and lr_final non-negative")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError(f"epochs must be positive (or max_steps set), got {self.epochs}")
        if self.task not in ("vlm", "vision_shapes"):
            raise ValueError(f"task must be 'vlm' or 'vision_shapes', got {self.task!r}")
        if self.multi_turn not in MULTI_TURN_RENDERINGS:
            raise ValueError(f"multi_turn must be one of {MULTI_TURN_RENDERINGS}, got {self.multi_turn!r}")
        if self.prepare not in ("", "shapes"):
            raise ValueError(f"prepare must be '' or 'shapes', got {self.prepare!r}")
        if not isinstance(self.trainable, list) or not self.trainable:
            raise ValueError("trainable must be a non-empty list of parameter-name patterns")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"adapter must be '', 'lora' or 'state', got {self.adapter!r}")
        if self.lora_rank < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("lora_rank must be >= 1 and lora_dropout in [0, 1)")
        if not isinstance(self.lora_targets, list) or not self.lora_targets:
            raise ValueError("lora_targets must be a non-empty list of module-name patterns")
        unknown = sorted(set(self.fit_to_data) - set(FITTED))
        if unknown:
            raise ValueError(f"fit_to_data: {unknown} cannot be fitted (these can: {', '.join(FITTED)})")

    @property
    def data_files(self) -> list[str]:
        """The files of `data`, in order (one, or several given comma-separated)."""
        return [path.strip() for path in self.data.split(",") if path.strip()]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**d)


def fit(cfg: TrainConfig, model_config, num_samples: int | None = None, world_size: int = 1) -> dict:
    """Set the options named in `cfg.fit_to_data` for this model (and, given `num_samples`, for this
    much data); returns what was set.

    The rule, for a fine-tune on one's own data: a global batch of half the rows, rounded down to a
    power of two, at most 64 (16 rows: 8; micro-batches of at most 8), enough passes that every row is seen some 320 times in total, or at
    least 3 times (16 rows: 20 epochs of 2 steps; 10k rows: 3 epochs), and a peak learning rate of
    0.25 / width: 2e-3 for the shipped model (width 128), 1.2e-4 for a 1B6 (width 2048), the
    order of the paper's stage 2 (6e-5 at 16× the batch). A tenth of it at the end, a tenth of
    the steps (at most 10) of warm-up. The sequence length and the image's place in the prompt
    are the model's own, so that training looks like what the model sees when it answers. LoRA
    takes ADAPTER_LR_SCALE times that learning rate; state tuning STATE_TUNING_LR whatever the width,
    falling to a hundredth.
    """
    wanted = set(cfg.fit_to_data)
    values: dict = {}
    if "ctx_len" in wanted:
        values["ctx_len"] = model_config.ctx_len
    if "image_position" in wanted:
        values["image_position"] = model_config.image_position
    state = cfg.adapter == "state"  # a state's scale does not follow the width
    if "lr" in wanted:
        scaled = round(0.25 * ADAPTER_LR_SCALE.get(cfg.adapter, 1.0) / model_config.rwkv.n_embd, 7)
        values["lr"] = STATE_TUNING_LR if state else scaled
    if "lr_final" in wanted:
        values["lr_final"] = round(values.get("lr", cfg.lr) / (100 if state else 10), 8)
    if num_samples is not None:
        global_batch = max(1, min(64, 1 << max(0, (num_samples // 2).bit_length() - 1)))
        if "micro_batch_size" in wanted:
            values["micro_batch_size"] = max(1, min(8, global_batch // world_size))
        if "grad_accum" in wanted:
            micro = values.get("micro_batch_size", cfg.micro_batch_size)
            values["grad_accum"] = max(1, global_batch // (micro * world_size))
        if "epochs" in wanted:
            values["epochs"] = float(min(100, max(3, math.ceil(320 / num_samples))))
        if "warmup_steps" in wanted:
            batch = values.get("micro_batch_size", cfg.micro_batch_size) * values.get("grad_accum", cfg.grad_accum)
            steps = math.ceil(values.get("epochs", cfg.epochs) * math.ceil(num_samples / (batch * world_size)))
            values["warmup_steps"] = min(10, steps // 10)
    for name, value in values.items():
        setattr(cfg, name, value)
    return values


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

PRESET_SUMMARIES = {
    "finetune": "your own LLaVA data on the shipped model (or --init/--model MODEL): batch, epochs and learning "
                "rate fitted to the data's size and the model; a 16-row dataset learns in about a minute on a CPU",
    "finetune-lora": "finetune with LoRA adapters (rank 8 on every projection and the projector), the model "
                     "frozen: writes only the adapter (PEFT format, ~1% of the model); use it with --adapter",
    "finetune-state": "finetune by state tuning: only each layer's initial WKV state is trained; writes a "
                      "small state file; use it with --state",
    "stage1": "the paper's v6.0 stage 1: the projector only, image first (set --data, --image_root, --init_lm "
              "and --model)",
    "stage2": "the paper's v6.0 stage 2: LM blocks, head and projector, sandwich prompt (set --data, --image_root, "
              "--init)",
    "tiny": "the shipped tiny model, from scratch on generated shapes: 4 stages, about 25 minutes on 2 CPU cores",
    "v7_stage1": "v7.00's stage 1: a new mlp projector only (the LM frozen), v7 prompt format (images first, "
                 "several per sample), ctx 2048 (set --data, --image_root, --init_lm and --model)",
    "v7_stage2": "v7.00's stage 2: LM blocks, head and projector, v7 prompt format, conversations cut into 5-round "
                 "samples (set --data, --image_root, --init)",
}


def presets(out_dir: str = "runs") -> dict[str, list[dict]]:
    """Named recipes; each is a list of stages (each stage starts from the previous one's result)."""
    tiny_data = os.path.join(out_dir, "tiny", "data")
    return {
        # fine-tuning on one's own data: what depends on the data's size and the model is fitted at
        # the start (`fit`); the trained parameters are the paper's stage 2 (embedding and vision frozen)
        "finetune": [dict(init="tiny", trainable=LM_STAGE2, fit_to_data=list(FITTED), log_every=5,
                          out_dir=os.path.join(out_dir, "finetune"))],
        # the same, parameter-efficient: the result is the adapter or the state alone (adapters/)
        "finetune-lora": [dict(init="tiny", adapter="lora", fit_to_data=list(FITTED), log_every=5,
                               out_dir=os.path.join(out_dir, "finetune-lora"))],
        "finetune-state": [dict(init="tiny", adapter="state", fit_to_data=list(FITTED), log_every=5,
                                out_dir=os.path.join(out_dir, "finetune-state"))],
        # the paper's v6.0 recipe (SPEC §8.1/8.2); set data/image_root/init_lm for your run
        "stage1": [dict(image_position="first", ctx_len=1024, trainable=["proj.*"], lr=1e-3, lr_final=1e-5,
                        micro_batch_size=16, grad_accum=16, epochs=1, out_dir=os.path.join(out_dir, "stage1"))],
        "stage2": [dict(image_position="middle", ctx_len=2048, trainable=LM_STAGE2, lr=6e-5, lr_final=1e-5,
                        micro_batch_size=8, grad_accum=16, epochs=2, grad_checkpointing=True,
                        out_dir=os.path.join(out_dir, "stage2"))],
        # v7.00's recipe (SPEC §8.1/8.2, the 0.1B scripts): stage 1 trains a new mlp projector with the
        # LM frozen (global batch 256, 1e-3 → 5e-5, the 512K samples of 558K: one pass); stage 2 the
        # LM and projector on the 5-round split of the 665K mix (batch 128, 6e-5 → 1.5e-5; the
        # official 1.92M samples are about two passes). Both in the v7 prompt format, ctx 2048.
        "v7_stage1": [dict(prompt_format="v7", projector="mlp", ctx_len=2048, trainable=["proj.*"], lr=1e-3,
                           lr_final=5e-5, micro_batch_size=32, grad_accum=8, epochs=1,
                           out_dir=os.path.join(out_dir, "v7_stage1"))],
        "v7_stage2": [dict(prompt_format="v7", ctx_len=2048, trainable=LM_STAGE2, lr=6e-5, lr_final=1.5e-5,
                           micro_batch_size=16, grad_accum=8, epochs=2, max_rounds=5, grad_checkpointing=True,
                           out_dir=os.path.join(out_dir, "v7_stage2"))],
        # the embedded default, from scratch on generated shapes in about 25 minutes on 2 CPU cores:
        # stage 0 pretrains the tiny vision encoder on the generator's labels (the role CLIP's own
        # pretraining plays for the real model), stage 1 aligns on captions (image first), stage 2
        # tunes on questions (sandwich), stage 3 on conversations. Nothing is pretrained, so stages 1-3
        # train the LM blocks, head and projector; the embedding stays at its random init (frozen, as in
        # the real stage 2), and so does the pretrained vision encoder.
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
            # stage 3 teaches follow-ups: the conversations, each later question with the image again
            # (image-every-turn, as the engine then renders its chats), a sixth of the single
            # questions replayed beside them
            dict(data=",".join(os.path.join(tiny_data, f) for f in ("stage2_multiturn.json", "stage3_questions.json")),
                 prepare="shapes", image_position="middle", ctx_len=256, trainable=TINY_TRAINABLE,
                 multi_turn="image-every-turn", lr=3e-4, lr_final=1e-5, warmup_steps=10, micro_batch_size=32,
                 max_steps=600, l2wrap=False, out_dir=os.path.join(out_dir, "tiny", "stage3"), log_every=20,
                 eval_heldout=os.path.join(tiny_data, "test.json")),
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
    try:
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        raise ValueError(f"expected {type(current).__name__}, got {value!r}") from None
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


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def load_stages(config: str, runs_dir: str = "runs") -> list[dict]:
    """The stages of a preset name or of a JSON file (one config, or {"stages": [...]}), as given."""
    table = presets(runs_dir)
    if config in table:
        return [dict(s) for s in table[config]]
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"--config {config!r} is neither a preset ({', '.join(table)}) nor a file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    stages = data["stages"] if isinstance(data, dict) and "stages" in data else [data]
    if not all(isinstance(s, dict) for s in stages):
        raise ValueError(f"{path}: a config is a JSON object of options (or {{\"stages\": [...]}})")
    return stages


def resolve(config: str, overrides: dict[str, str], runs_dir: str = "runs") -> list[TrainConfig]:
    """A preset name or a JSON file plus overrides → stage configs.

    `--model NAME` that is not a JSON object names the model to start from (`--init`), as `--model`
    does in every other command. An option given explicitly is never fitted (`fit_to_data`).
    """
    import difflib

    overrides = dict(overrides)
    if "model" in overrides and not _is_json_object(overrides["model"]):
        if "init" in overrides:
            raise ValueError("give the model to start from once: --init or --model, not both")
        overrides["init"] = overrides.pop("model")
    stages = load_stages(config, runs_dir)
    defaults = TrainConfig()
    known = [f.name for f in fields(TrainConfig)]
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise ValueError(f"unknown training option --{key}{hint}; `visualrwkv train --help` lists them")
    resolved = []
    for i, stage in enumerate(stages):
        merged = dict(stage)
        for key, value in overrides.items():
            try:
                merged[key] = _coerce(value, merged.get(key, getattr(defaults, key)))
            except ValueError as e:
                raise ValueError(f"--{key}: {e}") from None
        if "fit_to_data" in stage and "fit_to_data" not in overrides:
            merged["fit_to_data"] = [name for name in stage["fit_to_data"] if name not in overrides]
        if len(stages) > 1 and "out_dir" in overrides:  # one folder per stage under the given one
            merged["out_dir"] = os.path.join(merged["out_dir"], f"stage{i}")
        cfg = TrainConfig.from_dict(merged)
        if cfg.task == "vlm" and not cfg.data:
            raise ValueError(f"--config {config}: no training data: set --data FILE (LLaVA-format conversations, "
                             ".json or .jsonl) for the model to train on")
        resolved.append(cfg)
    return resolved
