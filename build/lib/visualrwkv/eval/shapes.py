"""Tiny drawn scenes for offline benchmark fixtures: a few colored shapes whose questions the picture answers."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (235, 200, 20)}
KINDS = ("circle", "square", "triangle")
SIZE = 48  # pixels; a 2x2 grid of cells keeps shapes from overlapping


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    cell: int  # 0..3, row-major in the 2x2 grid


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    word: str = ""  # text drawn across the bottom (TextVQA fixtures)

    def has(self, color: str, kind: str) -> bool:
        return any(s.color == color and s.kind == kind for s in self.shapes)

    def colors_of(self, kind: str) -> list[str]:
        return [s.color for s in self.shapes if s.kind == kind]


def random_scene(rng: random.Random, max_shapes: int = 3, word: str = "") -> Scene:
    """1..max_shapes shapes, each (color, kind) at most once, so "the {kind}" questions can be made unambiguous."""
    n = rng.randint(1, max_shapes)
    combos = rng.sample([(c, k) for c in COLORS for k in KINDS], n)
    cells = rng.sample(range(4), n)
    return Scene(tuple(Shape(kind=k, color=c, cell=cell) for (c, k), cell in zip(combos, cells)), word=word)


def absent_object(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A (color, kind) pair that is not in the scene."""
    return rng.choice([(c, k) for c in COLORS for k in KINDS if not scene.has(c, k)])


def unique_kind(scene: Scene) -> tuple[str, str] | None:
    """(kind, color) of a shape kind that occurs exactly once, so "What color is the {kind}?" has one answer."""
    for s in scene.shapes:
        if len(scene.colors_of(s.kind)) == 1:
            return s.kind, s.color
    return None


def draw(scene: Scene):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    half = SIZE // 2
    for s in scene.shapes:
        x0, y0 = (s.cell % 2) * half + 3, (s.cell // 2) * half + 3
        x1, y1 = x0 + half - 7, y0 + half - 7
        fill = COLORS[s.color]
        if s.kind == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.kind == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon(((x0 + x1) // 2, y0, x1, y1, x0, y1), fill=fill)
    if scene.word:
        pen.text((2, SIZE - 12), scene.word, fill=(0, 0, 0))
    return image


def save(scene: Scene, path: Path) -> None:
    """Write the scene as an image; the format follows the file extension (.png, .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(scene).save(path)


def png_bytes(scene: Scene) -> bytes:
    buf = io.BytesIO()
    draw(scene).save(buf, format="PNG")
    return buf.getvalue()
