"""Stage 0 of the tiny recipe: pretrain the from-scratch vision encoder on the shapes scenes.

Real VisualRWKV starts from CLIP, whose patch tokens already say what is where. A tiny encoder
trained only through a randomly initialised language model learns that very slowly (the answer
depends on a few patches among many, and the LM first has to learn to look). So, like CLIP's
pretraining but with the generator's own labels, each patch token is taught what covers it
(colour and kind of shape, or background) and the pooled tokens how many shapes there are. The
result is a VisualRWKV whose `vit` is pretrained and whose LM and projector are untouched.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from ..data.shapes import COLORS, KINDS, Scene
from ..model import VisualRWKV, VisualRWKVConfig

COLOR_NAMES = list(COLORS)


POSITION_BINS = 8  # object-centre targets: x and y quantised into this many bins


def patch_labels(scene: Scene, grid: int, image_size: int) -> np.ndarray:
    """[grid², 4] per patch: colour, kind, centre-x bin and centre-y bin of the shape covering most of it.

    Each value is 1 + the index (0 = background: no shape covers 15% of the patch). The centre bins
    are those of the whole shape, not of the patch: every token of an object then says where the
    object is, which is what "left of" and "above" questions compare.
    """
    cover = np.zeros((len(scene.shapes), grid, grid))
    for n, s in enumerate(scene.shapes):
        mask = Image.new("L", (image_size, image_size), 0)
        draw = ImageDraw.Draw(mask)
        left, top, right, bottom = (v * image_size for v in s.box)
        if s.kind == "circle":
            draw.ellipse((left, top, right, bottom), fill=1)
        elif s.kind == "square":
            draw.rectangle((left, top, right, bottom), fill=1)
        else:
            draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=1)
        m = np.asarray(mask, dtype=np.float64)
        cell = image_size // grid
        cover[n] = m.reshape(grid, cell, grid, cell).mean(axis=(1, 3))
    best = cover.argmax(axis=0).reshape(-1)
    present = cover.max(axis=0).reshape(-1) >= 0.15
    to_bin = lambda v: min(int(v * POSITION_BINS), POSITION_BINS - 1)  # noqa: E731
    per_shape = np.array([[COLOR_NAMES.index(s.color), KINDS.index(s.kind), to_bin(s.x), to_bin(s.y)]
                          for s in scene.shapes]) + 1
    return np.where(present[:, None], per_shape[best], 0)


class ShapesProbe(nn.Module):
    """Linear read-outs on the encoder's tokens: per patch, what covers it (colour, kind), where that
    object's centre is (x and y bins) and where the patch itself is (row, column); pooled, the count.

    The position targets keep "where" in every token: the language model reads the image as a
    sequence and has no position encoding of its own to tell left from right.
    """

    def __init__(self, width: int, rows: int, cols: int, max_count: int = 3):
        super().__init__()
        self.patch_heads = nn.ModuleList(
            nn.Linear(width, n + 1) for n in (len(COLOR_NAMES), len(KINDS), POSITION_BINS, POSITION_BINS)
        )
        self.row = nn.Linear(width, rows)
        self.col = nn.Linear(width, cols)
        self.count = nn.Linear(width, max_count)  # classes 0..max_count-1 are 1..max_count shapes

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        batch = tokens.shape[0]
        rows, cols = self.row.out_features, self.col.out_features
        loss = sum(F.cross_entropy(head(tokens).flatten(0, 1), labels[..., i].flatten())
                   for i, head in enumerate(self.patch_heads))
        loss = loss + F.cross_entropy(self.row(tokens).flatten(0, 1), torch.arange(rows).repeat_interleave(cols).repeat(batch))
        loss = loss + F.cross_entropy(self.col(tokens).flatten(0, 1), torch.arange(cols).repeat(rows * batch))
        return loss + F.cross_entropy(self.count(tokens.mean(dim=1)), counts)

    @torch.no_grad()
    def accuracy(self, tokens: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
        """Accuracy of each patch target on the patches that a shape covers, and of the count."""
        covered = labels[..., 0] > 0
        out = {name: (head(tokens).argmax(-1) == labels[..., i])[covered].float().mean().item()
               for i, (name, head) in enumerate(zip(("colour", "kind", "x", "y"), self.patch_heads))}
        out["count"] = (self.count(tokens.mean(dim=1)).argmax(-1) == counts).float().mean().item()
        return out


def _load_split(data_dir: Path, scenes: dict, split: str, vit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [(data_dir / name, Scene.from_dict(s)) for name, s in scenes.items() if f"/{split}/" in name]
    pixels = torch.stack([vit.preprocess(path) for path, _ in items]) if items else torch.empty(0)
    rows, _ = vit.patch_grid
    labels = torch.tensor(np.stack([patch_labels(scene, rows, vit.image_size) for _, scene in items]),
                          dtype=torch.long) if items else torch.empty(0, dtype=torch.long)
    counts = torch.tensor([len(scene.shapes) - 1 for _, scene in items], dtype=torch.long)
    return pixels, labels, counts


def _epoch_batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches of one shuffled pass over n images after another (an epoch sees each image once)."""
    while True:
        yield from torch.randperm(n, generator=generator).split(batch_size)


def pretrain_tiny_vision(cfg, log=print) -> Path:
    """Build the model of `cfg.model`, pretrain its tiny vision encoder, save it to out_dir/final."""
    torch.manual_seed(cfg.seed)
    data_dir = Path(cfg.data_files[0]).parent  # the generator's folder
    scenes_path = data_dir / "scenes.json"
    if not scenes_path.is_file():
        raise FileNotFoundError(f"{scenes_path} not found: vision pretraining needs the shapes generator's scenes")
    meta = json.loads(scenes_path.read_text())
    model = VisualRWKV(VisualRWKVConfig.from_dict(dict(cfg.model)))
    vit = model.vit
    if vit.kind != "tiny":
        raise ValueError("vision pretraining is for the tiny from-scratch encoder")
    pixels, labels, counts = _load_split(data_dir, meta["scenes"], "train", vit)
    if not len(pixels):
        raise ValueError(f"{scenes_path} has no training images")
    test = _load_split(data_dir, meta["scenes"], "test", vit)

    # the shipped data holds 1–3 shapes, the harder variant up to 6
    max_count = max(3, max(len(s["shapes"]) for s in meta["scenes"].values()))
    probe = ShapesProbe(vit.hidden_size, *vit.patch_grid, max_count=max_count)
    vit.trainable = True
    vit.train()
    params = list(vit.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps = cfg.max_steps or math.ceil(cfg.epochs * math.ceil(len(pixels) / cfg.micro_batch_size))
    batches = _epoch_batches(len(pixels), cfg.micro_batch_size, torch.Generator().manual_seed(cfg.seed))
    t0 = time.perf_counter()
    for step in range(steps):
        idx = next(batches)
        tokens = vit(pixels[idx])
        loss = probe.loss(tokens, labels[idx], counts[idx])
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            log(f"vision pretraining step {step + 1}/{steps}: loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    vit.eval()
    if len(test[0]):
        with torch.no_grad():
            tokens = torch.cat([vit(chunk) for chunk in test[0].split(256)])
        accuracy = probe.accuracy(tokens, test[1], test[2])
        log("held-out probe accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    final = Path(cfg.out_dir) / "final"
    model.save_pretrained(final)
    return final
