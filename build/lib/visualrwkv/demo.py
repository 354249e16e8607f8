"""`visualrwkv demo`: the first command a new user runs — the shipped model answers questions about
the example images that come with the package."""

from __future__ import annotations

import json
import time
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"


def load_examples(directory: Path = EXAMPLES_DIR) -> list[dict]:
    path = directory / "questions.json"
    if not path.is_file():
        raise FileNotFoundError(f"no examples at {path}")
    return json.loads(path.read_text())


def run(args) -> int:
    from .engine.model_args import load_model_from_args

    t0 = time.perf_counter()
    model = load_model_from_args(args)
    print(f"model: {args.model or 'the shipped tiny model'} "
          f"(RWKV-6 C={model.config.rwkv.n_embd} L={model.config.rwkv.n_layer}, {model.config.vision.kind} vision; "
          f"loaded in {time.perf_counter() - t0:.1f} s)\n")
    examples = load_examples()
    right = 0
    for ex in examples:
        image = EXAMPLES_DIR / ex["image"]
        answer = model.chat(image, ex["question"], max_new_tokens=16)
        ok = answer.strip().rstrip(".").lower() == ex["expected"].strip().rstrip(".").lower()
        right += ok
        question = ex["question"].replace("\n", " ")
        print(f"[{ex['image']}] {question}\n  -> {answer}   (expected: {ex['expected']}{'' if ok else ', MISSED'})")
    print(f"\n{right}/{len(examples)} answered as expected. Ask your own: visualrwkv ask --image IMG \"question\"")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="answer questions about the bundled example images")
    from .engine.model_args import add_model_arguments

    add_model_arguments(p)
    p.set_defaults(func=run)
