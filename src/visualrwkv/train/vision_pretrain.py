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


def patch_labels(scene: Scene, grid: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: (colour index + 1, kind index + 1) of the shape covering most of it, 0 = background."""
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
    best = cover.argmax(axis=0)
    present = cover.max(axis=0) >= 0.15
    colors = np.where(present, [[COLOR_NAMES.index(scene.shapes[b].color) + 1 for b in row] for row in best], 0)
    kinds = np.where(present, [[KINDS.index(scene.shapes[b].kind) + 1 for b in row] for row in best], 0)
    return colors.reshape(-1), kinds.reshape(-1)


class ShapesProbe(nn.Module):
    """Linear read-outs on the encoder's tokens: per-patch colour, kind, row and column; pooled count.

    The row/column targets keep "where" in every token: the language model reads the image as a
    sequence and has no position encoding of its own to tell left from right.
    """

    def __init__(self, width: int, rows: int, cols: int):
        super().__init__()
        self.color = nn.Linear(width, len(COLOR_NAMES) + 1)
        self.kind = nn.Linear(width, len(KINDS) + 1)
        self.row = nn.Linear(width, rows)
        self.col = nn.Linear(width, cols)
        self.count = nn.Linear(width, 3)


def pretrain_tiny_vision(cfg, log=print) -> Path:
    """Build the model of `cfg.model`, pretrain its tiny vision encoder, save it to out_dir/final."""
    torch.manual_seed(cfg.seed)
    data_dir = Path(cfg.data).parent
    scenes_path = data_dir / "scenes.json"
    if not scenes_path.is_file():
        raise FileNotFoundError(f"{scenes_path} not found: vision pretraining needs the shapes generator's scenes")
    meta = json.loads(scenes_path.read_text())
    items = [(data_dir / name, Scene.from_dict(s)) for name, s in meta["scenes"].items() if "/train/" in name]
    model = VisualRWKV(VisualRWKVConfig.from_dict(dict(cfg.model)))
    vit = model.vit
    if vit.kind != "tiny":
        raise ValueError("vision pretraining is for the tiny from-scratch encoder")
    rows, cols = vit.patch_grid
    pixels = torch.stack([vit.preprocess(path) for path, _ in items])
    labels = [patch_labels(scene, rows, vit.image_size) for _, scene in items]
    colors = torch.tensor(np.stack([c for c, _ in labels]), dtype=torch.long)
    kinds = torch.tensor(np.stack([k for _, k in labels]), dtype=torch.long)
    counts = torch.tensor([len(scene.shapes) - 1 for _, scene in items])

    probe = ShapesProbe(vit.hidden_size, rows, cols)
    patch_rows = torch.arange(rows).repeat_interleave(cols)
    patch_cols = torch.arange(cols).repeat(rows)
    vit.trainable = True
    vit.train()
    params = list(vit.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps = cfg.max_steps or math.ceil(cfg.epochs * len(items) / cfg.micro_batch_size)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(items), (cfg.micro_batch_size,), generator=g)
        tokens = vit(pixels[idx])
        n = len(idx)
        loss = (F.cross_entropy(probe.color(tokens).flatten(0, 1), colors[idx].flatten())
                + F.cross_entropy(probe.kind(tokens).flatten(0, 1), kinds[idx].flatten())
                + F.cross_entropy(probe.row(tokens).flatten(0, 1), patch_rows.repeat(n))
                + F.cross_entropy(probe.col(tokens).flatten(0, 1), patch_cols.repeat(n))
                + F.cross_entropy(probe.count(tokens.mean(dim=1)), counts[idx]))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            with torch.no_grad():
                acc = (probe.color(tokens).argmax(-1) == colors[idx]).float().mean().item()
            log(f"vision pretraining step {step + 1}/{steps}: loss {loss.item():.3f}, patch colour accuracy "
                f"{acc:.3f} ({time.perf_counter() - t0:.0f} s)")
    vit.eval()
    final = Path(cfg.out_dir) / "final"
    model.save_pretrained(final)
    return final
