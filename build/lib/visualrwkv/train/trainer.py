"""The training loop: one process or many under torchrun (DDP by default, FSDP to shard).

The loss is the sample-level mean (SPEC §7.6) over every sample of the global batch: each rank sums
its per-sample losses and divides by the global sample count of the optimizer step, so the
gradient is the same whatever the world size or the accumulation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..constants import IGNORE_INDEX
from ..model import VisualRWKV, VisualRWKVConfig
from ..rwkv.checkpoint import load_rwkv
from ..utils import announce_if_slow, atomic_write
from .checkpoint import latest_checkpoint, load_checkpoint, remove_temporaries, save_checkpoint, truncate_metrics
from .config import TrainConfig, fit
from ..adapters.training import save_result, setup_trainable


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward also pushes each position's largest logit towards 0 (SPEC §2.5).

    The official term is 1e-4 · max / (B·T) per micro-batch, which changes with the micro-batch size;
    here each position gets 1e-4 · max times its weight in the loss (1 / its row's label count × the
    global-batch scale), so the term too is the same whatever the world size or accumulation.
    """

    @staticmethod
    def forward(ctx, loss, logits, weights):
        ctx.save_for_backward(logits, weights)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        logits, weights = ctx.saved_tensors
        top, index = logits.max(dim=-1, keepdim=True)
        grad = torch.zeros_like(logits).scatter_(-1, index, top * (1e-4 * weights[:, None]))
        return grad_output, grad, None


class TrainingStep(nn.Module):
    """Wraps the model so that DDP/FSDP see one forward that returns per-sample losses."""

    def __init__(self, model: VisualRWKV, l2wrap: bool, reduction: str = "sample"):
        super().__init__()
        self.model = model
        self.l2wrap = l2wrap
        self.reduction = reduction

    def forward(self, input_ids, pixel_values, labels, ctx_len: int, loss_scale: float = 1.0) -> Tensor:
        """Per-sample cross-entropy [B]: the mean over the sample's labels (reduction "sample") or their
        sum ("token", the caller dividing by the batch's label count); `loss_scale` is the factor the
        caller applies to their sum."""
        model = self.model
        batch = model.embed_batch(input_ids, pixel_values, labels, ctx_len)
        hidden, _ = model.hidden_states(batch.embeds, batch.spans)
        targets = batch.labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        per_row = supervised.sum(dim=1).clamp(min=1)
        rows = supervised.nonzero()[:, 0]
        # logits only where a label is: the [B, T, 65536] tensor would dominate time and memory
        logits = model.rwkv.project(hidden[:, :-1][supervised]).float()
        ce = F.cross_entropy(logits, targets[supervised], reduction="none")
        sample_mean = self.reduction == "sample"
        if self.l2wrap and logits.requires_grad:
            # each position's weight in the loss: 1 / its row's label count, or 1 in a token mean
            weights = loss_scale / per_row[rows].float() if sample_mean else torch.full_like(ce, loss_scale)
            ce = L2Wrap.apply(ce, logits, weights)
        per_sample = torch.zeros(len(input_ids), device=ce.device).index_add(0, rows, ce)
        return per_sample / per_row if sample_mean else per_sample


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine from lr to lr_final over the remaining steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (0.1 + 0.9 * step / cfg.warmup_steps)
    if cfg.lr == cfg.lr_final:
        return cfg.lr
    progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)))
    return cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> tuple[DistInfo, torch.device]:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        device = torch.device("cuda", info.local_rank)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return info, device


def build_model(cfg: TrainConfig, device) -> VisualRWKV:
    if cfg.init:
        with announce_if_slow(f"loading {cfg.init}"):
            model = VisualRWKV.from_pretrained(cfg.init)
        if cfg.projector and cfg.projector != model.config.projector:
            raise ValueError(f"projector {cfg.projector!r} applies to a new model (--model); the model from "
                             f"{cfg.init} has a {model.config.projector!r} projector")
    else:
        if not cfg.model:
            raise ValueError("set `init` (a model to start from) or `model` (the config of a new one)")
        # the options given for the new model go into its config, so that the defaults follow them
        chosen = {"projector": cfg.projector, "prompt_format": cfg.prompt_format}
        model = VisualRWKV(VisualRWKVConfig.from_dict(dict(cfg.model) | {k: v for k, v in chosen.items() if v}))
        if cfg.init_lm:
            lm = load_rwkv(cfg.init_lm)
            if lm.config != model.config.rwkv:
                raise ValueError(f"init_lm {cfg.init_lm} is {lm.config}, the model config says {model.config.rwkv}")
            model.rwkv.load_state_dict(lm.state_dict(), strict=True)
    if cfg.prompt_format and cfg.prompt_format != model.config.prompt_format:
        # a model from `init` is saved with the format it is trained in; the image limit is the new
        # format's (its text-only layout stays the one it was trained with)
        model.config = dataclasses.replace(model.config, prompt_format=cfg.prompt_format, max_images=None)
    if cfg.multi_turn == "image-every-turn":  # the model is saved saying how its chats are to be rendered
        model.config = dataclasses.replace(model.config, image_every_turn=True)
    return model.to(device)


def apply_freezing(model: nn.Module, patterns: list[str]) -> list[str]:
    """requires_grad = name matches a pattern; returns the trained names (an error if none)."""
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(fnmatch.fnmatchcase(name, pat) for pat in patterns))
        if p.requires_grad:
            trained.append(name)
    if not trained:
        raise ValueError(f"trainable patterns {patterns} match no parameter")
    if hasattr(model, "vit"):
        model.vit.trainable = any(n.startswith("vit.") for n in trained)
    return trained


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print):
        from ..data.llava import LlavaDataset, collate
        from ..data.sampler import EpochSampler

        self.cfg = cfg
        self.dist, self.device = init_distributed()
        self.log = log if self.dist.is_main else (lambda *a, **k: None)
        torch.manual_seed(cfg.seed)
        prepare_data(cfg)
        self.model = build_model(cfg, self.device)
        fit(cfg, self.model.config)  # the model's own ctx_len and prompt layout, where asked
        self.trained_names = setup_trainable(self.model, cfg)  # adapters: the LoRA matrices or the state
        self.model.rwkv.gradient_checkpointing = cfg.grad_checkpointing

        # without image_root, each file's image paths start from that file's folder
        with announce_if_slow(f"reading {cfg.data}"):
            self.dataset = LlavaDataset(cfg.data_files, cfg.image_root or None, tokenizer=self.model.tokenizer,
                                        image_position=cfg.image_position, ctx_len=cfg.ctx_len,
                                        tokens_per_image=self.model.vit.num_tokens,
                                        text_only_positions=self.model.text_only_positions,
                                        max_rounds=cfg.max_rounds or None,
                                        prompt_format=self.model.config.prompt_format,
                                        max_images=self.model.config.max_images, multi_turn=cfg.multi_turn,
                                        skip_bad_rows=cfg.skip_bad_rows, preprocess=self.model.vit.preprocess)
        if cfg.fit_to_data:
            fitted = fit(cfg, self.model.config, len(self.dataset), self.dist.world_size)
            self.log(f"fitted to {len(self.dataset)} samples and the model: "
                     + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in fitted.items()))
        self.sampler = EpochSampler(len(self.dataset), seed=cfg.seed, rank=self.dist.rank,
                                    world_size=self.dist.world_size,
                                    lengths=self.dataset.approx_lengths() if cfg.length_grouping else None,
                                    batch_size=cfg.micro_batch_size)
        self.loader_kwargs = dict(batch_size=cfg.micro_batch_size, collate_fn=collate, num_workers=cfg.num_workers,
                                  drop_last=False)
        self.global_batch = cfg.micro_batch_size * cfg.grad_accum * self.dist.world_size
        # an epoch is one pass: its last step may have fewer micro-batches (see `_steps`)
        steps_per_epoch = max(1, math.ceil(len(self.sampler.shard(0)) / (cfg.micro_batch_size * cfg.grad_accum)))
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        self.step_module = self._wrap(TrainingStep(self.model, cfg.l2wrap, cfg.loss_reduction))
        params = [p for p in self.step_module.parameters() if p.requires_grad]
        # matrices decay; vectors (squeezed rank < 2: norms, mixes, biases) do not (SPEC §8.3)
        decay = [p for p in params if sum(d > 1 for d in p.shape) >= 2]
        no_decay = [p for p in params if sum(d > 1 for d in p.shape) < 2]
        # the fused kernel is several times faster than the per-tensor loop (a tenth of a tiny model's
        # step on CPU); FSDP's sharded parameters take the multi-tensor path instead
        implementation = {"foreach": True} if self.dist.world_size > 1 and cfg.distributed == "fsdp" else {"fused": True}
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, **implementation)
        self.step = 0
        self.samples_seen = 0
        self.epoch = 0
        self.consumed = 0  # samples of the current epoch's shard already trained on (this rank)
        self.out_dir = Path(cfg.out_dir)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self._resume()

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.dist.world_size == 1:
            return module
        if self.cfg.distributed == "fsdp":
            # FSDP2: each block is a unit (its parameters are gathered only while it runs); the rest
            # (embedding, head, projector, vision tower) forms the root unit. Works with gloo on CPU.
            from torch.distributed.fsdp import fully_shard

            for block in module.model.rwkv.blocks:
                fully_shard(block)
            fully_shard(module)
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                   find_unused_parameters=True)

    def _no_sync(self):
        """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
        module = self.step_module
        if hasattr(module, "no_sync"):
            return module.no_sync()
        if hasattr(module, "set_requires_gradient_sync"):
            @contextlib.contextmanager
            def fsdp_no_sync():
                module.set_requires_gradient_sync(False)
                try:
                    yield
                finally:
                    module.set_requires_gradient_sync(True)
            return fsdp_no_sync()
        return contextlib.nullcontext()

    # ---- checkpoints ----------------------------------------------------------------------
    def _full_state(self) -> tuple[dict, dict]:
        """(trained parameters, optimizer state) as full tensors on every rank's CPU (sharded under FSDP)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.step_module, self.optimizer, options=options)
        prefix = "model."
        trained = {k[len(prefix):]: v for k, v in model_sd.items() if k[len(prefix):] in set(self.trained_names)}
        return trained, optim_sd

    def _resume(self) -> None:
        if self.dist.is_main:
            for stale in remove_temporaries(self.out_dir) + remove_temporaries(self.out_dir / "final"):
                self.log(f"removed {stale}, left by an interrupted write")
        found = latest_checkpoint(self.out_dir)
        if found is None:
            if self.dist.is_main:
                truncate_metrics(self.metrics_path, 0)  # a run that starts over logs from step 1 again
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        weights, state = load_checkpoint(found)
        missing = set(self.trained_names) - set(weights)
        if missing:
            raise ValueError(f"{found}: checkpoint lacks trained parameters {sorted(missing)[:5]}: "
                             "was it written with other `trainable` patterns?")
        set_state_dict(self.step_module, self.optimizer,
                       model_state_dict={"model." + k: v for k, v in weights.items()},
                       optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True, strict=False))
        self.step, self.epoch = state["step"], state["epoch"]
        self.consumed, self.samples_seen = state["consumed"], state["samples_seen"]
        torch.set_rng_state(state["torch_rng"])
        if self.dist.is_main:
            truncate_metrics(self.metrics_path, self.step)  # the steps after it are trained (and logged) again
        self.log(f"resumed from {found} (step {self.step}, epoch {self.epoch}, {self.consumed} samples into it)")

    def _save(self) -> dict:
        """A resumable checkpoint; returns the trained parameters (full tensors)."""
        trained, optim_sd = self._full_state()  # collective under FSDP: every rank takes part
        if self.dist.is_main:
            state = {"optimizer": optim_sd, "step": self.step, "epoch": self.epoch, "consumed": self.consumed,
                     "samples_seen": self.samples_seen, "torch_rng": torch.get_rng_state()}
            save_checkpoint(self.out_dir, self.step, trained, state, self.cfg.to_dict(), self.cfg.keep_last)
        if self.dist.world_size > 1:
            dist.barrier()
        return trained

    # ---- the loop -------------------------------------------------------------------------
    def _steps(self):
        """(micro-batches of one optimizer step, epoch, position in the epoch after them) from the resume
        point on: grad_accum micro-batches, fewer at the end of an epoch, so that a step never spans two
        epochs and an epoch is exactly one pass over the data."""
        from torch.utils.data import DataLoader

        epoch, position = self.epoch, self.consumed
        while True:
            order = self.sampler.shard(epoch)[position:]
            step = []
            # its own generator: a loader draws its base seed when it starts, which from the global RNG
            # would shift every later random draw (LoRA dropout) of a resumed run against a straight one
            loader = DataLoader(self.dataset, sampler=order.tolist(), generator=torch.Generator().manual_seed(epoch),
                                **self.loader_kwargs)
            for batch in loader:
                position += len(batch["ids"])
                step.append(batch)
                if len(step) == self.cfg.grad_accum:
                    yield step, epoch, position
                    step = []
            if step:
                yield step, epoch, position
            epoch, position = epoch + 1, 0

    def train(self) -> Path:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            with atomic_write(self.out_dir / "train_config.json", "w") as f:
                json.dump(cfg.to_dict(), f, indent=2)
        self.step_module.train()
        steps = self._steps()
        progress = None
        if cfg.progress and self.dist.is_main:
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.step, desc=Path(cfg.out_dir).name, dynamic_ncols=True)
        writer = _tensorboard(self.out_dir) if cfg.tensorboard and self.dist.is_main else None
        t_start, tokens = time.perf_counter(), 0
        skipped = 0  # samples replaced since the last metrics line (bad rows, no label within ctx_len)
        while self.step < self.total_steps:
            lr = lr_at(self.step, self.total_steps, cfg)
            for group in self.optimizer.param_groups:  # every group, decayed or not (SPEC §8.3 quirk 1)
                group["lr"] = lr
            micro, epoch, consumed = next(steps)
            # what the loss is a mean over: the step's samples, or its answer tokens (loss_reduction)
            local = sum(self._loss_units(b) for b in micro)
            counts = torch.tensor([local, sum(len(b["ids"]) for b in micro)], dtype=torch.float64)
            if self.dist.world_size > 1:
                dist.all_reduce(counts)
            total, global_samples = float(counts[0]), int(counts[1])
            loss_sum = 0.0
            for i, batch in enumerate(micro):
                sync = i == len(micro) - 1 or self.dist.world_size == 1
                context = contextlib.nullcontext() if sync else self._no_sync()
                with context, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                    # × world size: DDP averages gradients over ranks, we want the global-batch mean
                    scale = self.dist.world_size / total
                    per_sample = self.step_module(*self._inputs(batch), ctx_len=cfg.ctx_len, loss_scale=scale)
                    loss = per_sample.sum() * scale
                loss.backward()
                loss_sum += per_sample.detach().sum().item()
                tokens += int(batch["lengths"].sum())
                skipped += len(batch["skipped"])
            self.epoch, self.consumed = epoch, consumed
            grad_norm = None
            if cfg.grad_clip > 0:
                params = [p for p in self.step_module.parameters() if p.grad is not None]
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.samples_seen += global_samples
            mean_loss = loss_sum / local
            if progress is not None:
                elapsed = time.perf_counter() - t_start
                progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens / elapsed:.0f}")
                progress.update(1)
            if self.dist.is_main and (self.step % cfg.log_every == 0 or self.step == self.total_steps):
                record = {"step": self.step, "epoch": self.epoch, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                          "samples": self.samples_seen, "skipped": skipped, "elapsed_s": time.perf_counter() - t_start}
                skipped = 0
                if progress is None:  # no bar: a line, so that a long run is never silent
                    self.log(f"step {self.step}/{self.total_steps}: loss {mean_loss:.3f}, lr {lr:.2e} "
                             f"({record['elapsed_s']:.0f} s)")
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    writer.add_scalar("loss", mean_loss, self.step)
                    writer.add_scalar("lr", lr, self.step)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                self._save()
        if progress is not None:
            progress.close()
        report = self.dataset.skip_report()
        if report:
            self.log(report)
        final = self.save_final()
        if cfg.eval_heldout and self.dist.is_main:
            self.evaluate_heldout(final)
        return final

    def evaluate_heldout(self, final: Path) -> None:
        from ..eval.heldout import evaluate_heldout

        self.model.eval()
        self.log(f"held-out evaluation on {self.cfg.eval_heldout}…")
        with torch.no_grad():
            result = evaluate_heldout(self.model, self.cfg.eval_heldout, progress=self.cfg.progress)
        self.log(f"held-out accuracy ({self.cfg.eval_heldout}):\n{result.markdown()}")
        with atomic_write(final / "heldout.json", "w") as f:
            json.dump({"accuracy": result.accuracy, "total": result.total, "per_type": result.per_type,
                       **({"per_turn": result.per_turn} if len(result.per_turn) > 1 else {}),
                       "wrong_examples": result.examples}, f, indent=2)

    def _loss_units(self, batch) -> int:
        """How many terms this micro-batch adds to the loss's mean: its samples, or for a token mean
        its labels (every label but a row's first position is a target: that one is a human token)."""
        if self.cfg.loss_reduction == "sample":
            return len(batch["ids"])
        return sum(int((row[:n] != IGNORE_INDEX).sum()) for row, n in zip(batch["labels"], batch["lengths"].tolist()))

    def _inputs(self, batch):
        ids = [row[:n].tolist() for row, n in zip(batch["input_ids"], batch["lengths"].tolist())]
        labels = [row[:n].tolist() for row, n in zip(batch["labels"], batch["lengths"].tolist())]
        pixels = [torch.stack(images) if images else torch.zeros(0, *self.model.vit.pixel_shape)
                  for images in batch["images"]]
        return ids, pixels, labels

    def save_final(self) -> Path:
        """A last resumable checkpoint, and the whole model in the `from_pretrained` format."""
        final = self.out_dir / "final"
        trained = self._save()
        if self.cfg.adapter:  # the adapter alone: the frozen base is the run's init
            if self.dist.is_main:
                written = save_result(final, self.cfg, self.model, trained)
                with atomic_write(final / "train_config.json", "w") as f:
                    json.dump(self.cfg.to_dict(), f, indent=2)
                self.log(f"{self.cfg.adapter} adapter written to {written} (use it with "
                         f"{'--adapter ' + str(final) if self.cfg.adapter == 'lora' else '--state ' + str(written)})")
            if self.dist.world_size > 1:
                dist.barrier()
            return final
        model = self.model
        if self.dist.world_size > 1 and self.cfg.distributed == "fsdp":
            # the local parameters are shards: gather the whole model on rank 0 (a collective call)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.step_module,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.dist.is_main:
                model = VisualRWKV(self.model.config)
                model.load_state_dict({k[len("model."):]: v for k, v in full.items()}, strict=True)
        if self.dist.is_main:
            with announce_if_slow(f"writing {final}"):
                model.save_pretrained(final)
            with atomic_write(final / "train_config.json", "w") as f:
                json.dump(self.cfg.to_dict(), f, indent=2)
        if self.dist.world_size > 1:
            dist.barrier()
        return final


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError("tensorboard=True needs the tensorboard package (pip install tensorboard)") from e
    return SummaryWriter(str(out_dir / "tensorboard"))


def prepare_data(cfg: TrainConfig) -> None:
    """Generate the synthetic shapes dataset when a preset asks for it and it is not there yet."""
    files = [Path(path) for path in cfg.data_files]
    if cfg.prepare != "shapes" or all(path.is_file() for path in files):
        return
    from ..data.shapes import generate_shapes_dataset

    out = files[0].parent
    if int(os.environ.get("RANK", "0")) == 0:
        generate_shapes_dataset(out, num_train_images=cfg.prepare_images, num_test_images=max(200, cfg.prepare_images // 10))
    else:
        while not all(path.is_file() for path in files):
            time.sleep(0.5)
