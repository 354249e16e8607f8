"""`visualrwkv eval run`: answer a benchmark with a model, then score it.

Predictions are appended to a JSONL file as they come (one fsync'd line per answer), so a run that
is killed resumes where it stopped: answered questions are skipped, a line torn by the kill is
dropped. The file's first line records what produced it (`eval.provenance`); a file of another run
(model, dtype, task, split, prompt style, answer length) is refused rather than resumed, unless
`restart`. Under torchrun each rank answers its own shard into its own file; rank 0 merges and scores.
Generation is greedy through the batching engine (no penalties: the scores are the model's own).

Questions without an image (ScienceQA's text problems) are asked one of two ways (`imageless`):
- "text-only" (default): a text prompt, laid out as the model config says (v6.0: the image slot of
  zero vectors, which is what the official v6.0 `evaluate.py` does for ScienceQA: its questions come
  as `conversations` whose text has no `<image>`, so the encoded stand-in image is zeroed);
- "blank-image": what the official `evaluate.py` does for questions given as `text` lines without an
  `image`: `<image>\n` is put before the question and an all-zero pixel tensor (crop size, i.e.
  3×336×336 for CLIP-L/336, zero after normalisation, so the mean colour) goes through the encoder
  and the projector as a real image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..engine.sampling import SamplingParams
from .items import EvalDataError, EvalItem
from .provenance import RECORD_KEY, differences, is_provenance_record, provenance_line


def _read_done(path: Path) -> tuple[dict | None, set[tuple[str, int]]]:
    """The provenance record and the keys already answered in `path`.

    A torn last line (a kill mid-write) is cut off the file and answered again; a complete last line that only
    lacks its newline is kept, and the newline added, so the next answer starts a line of its own.
    """
    if not path.is_file():
        return None, set()
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")  # a file ending in a newline gives an empty last piece
    recorded, done, good_bytes = None, set(), 0
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            try:
                record = json.loads(raw)
                if number == 1 and is_provenance_record(record):
                    recorded = record[RECORD_KEY]
                else:
                    done.add((str(record["question_id"]), int(record.get("round_id", 0))))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                    break  # the last line, torn by an interrupted write: drop it and answer it again
                raise EvalDataError(f"{path}:{number}: not a prediction line ({e})") from e
        good_bytes += len(raw) + (number < len(lines))
    if good_bytes < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    elif data and not data.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
    return recorded, done


def _resume(path: Path, provenance: dict, restart: bool) -> set[tuple[str, int]]:
    """Keys already answered by *this* run in `path`; a file of another run is refused (or, with restart, emptied).

    A new or emptied file gets the provenance record as its first line.
    """
    recorded, done = (None, set()) if restart else _read_done(path)
    if recorded is None and done:
        raise EvalDataError(
            f"{path} holds {len(done)} predictions that do not record what produced them; pass --restart to answer "
            "again from scratch, or choose another --out")
    if recorded is not None:
        changed = differences(recorded, provenance)
        if changed:
            raise EvalDataError(
                f"{path} holds predictions of another run ({'; '.join(changed)}); pass --restart to answer again "
                "from scratch, or choose another --out")
        return done
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(provenance_line(provenance))
        f.flush()
        os.fsync(f.fileno())
    return set()


IMAGELESS = ("text-only", "blank-image")
BLANK_DIGEST = b"blank-pixels"  # names the stand-in image in the prefix cache


def _prompt_inputs(item: EvalItem, model, imageless: str) -> tuple[str, object]:
    """(human turn text, ImageInput, a list of them, or None) for one question."""
    from ..engine.engine import ImageInput
    from .tasks.common import with_image

    if item.image is None:
        if imageless == "blank-image":
            return with_image(item.text), ImageInput(model.vit.blank_pixels()[0], BLANK_DIGEST)
        return item.text, None
    return item.text, _image_input(item)


def _image_input(item: EvalItem):
    from ..engine.engine import ImageInput

    if isinstance(item.image, (bytes, bytearray)):
        return ImageInput.from_bytes(bytes(item.image))
    if isinstance(item.image, tuple):  # several images, in order
        return [ImageInput.from_path(path) for path in item.image]
    return ImageInput.from_path(item.image)


def answer_items(model, items: list[EvalItem], out_path: Path, provenance: dict, *, restart: bool = False,
                 batch_size: int = 16, max_new_tokens: int = 64, progress: bool = True,
                 imageless: str = "text-only") -> int:
    """Append a prediction line for every item not yet in `out_path`; returns how many were answered now.

    `provenance` (see `eval.provenance`) is this run's record: a file holding another run's answers is refused,
    unless `restart`, which answers everything again.
    """
    from ..engine.engine import Engine
    from .predictions import prediction_record

    if imageless not in IMAGELESS:
        raise ValueError(f"imageless must be one of {IMAGELESS}, got {imageless!r}")

    done = _resume(out_path, provenance, restart)
    todo = [item for item in items if item.key not in done]
    if not todo:
        return 0
    params = SamplingParams(temperature=0.0, top_p=0.0, presence_penalty=0.0, frequency_penalty=0.0,
                            max_tokens=max_new_tokens)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="answering", dynamic_ncols=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with Engine(model, max_batch_size=batch_size) as engine, open(out_path, "a") as out:
        window = 2 * batch_size  # keep the decode batch full without queueing the whole benchmark
        for start in range(0, len(todo), window):
            chunk = todo[start:start + window]
            handles = []
            for item in chunk:
                try:
                    prompt = engine.build_prompt(*_prompt_inputs(item, model, imageless))
                except ValueError as e:
                    raise EvalDataError(f"question {item.question_id}: {e}") from e
                handles.append(engine.submit(prompt, params))
            for item, handle in zip(chunk, handles):
                text = handle.result().text
                out.write(json.dumps(prediction_record(item, text), ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return len(todo)


def run_eval(task: str, data_dir: str | Path, out_dir: str | Path, model=None, model_path: str | None = None, *,
             split: str | None = None, variant: str | None = None, prompt: str | None = None, limit: int | None = None,
             batch_size: int = 16, max_new_tokens: int = 64, progress: bool = True, restart: bool = False,
             imageless: str = "text-only"):
    """Answer (resuming) and score; returns the EvalResult and writes results.{md,json} into out_dir.

    `restart`: answer everything again even if out_dir holds predictions (of this run or of another)."""
    import torch.distributed as dist

    from ..engine.defaults import load_model
    from ..utils import atomic_write
    from .benchmarks import _choose, get_task, read_items, score_predictions
    from .provenance import run_provenance
    from .report import render_json, render_markdown

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    out_dir = Path(out_dir)
    items = read_items(task, data_dir, split=split, prompt=prompt)
    items = items[:limit] if limit else items
    model = model if model is not None else load_model(model_path)
    spec = get_task(task)
    provenance = run_provenance(model, task=task, split=_choose(split, spec.splits, "split", task),
                                prompt=_choose(prompt, spec.prompts, "prompt style", task),
                                max_new_tokens=max_new_tokens, model_path=model_path, imageless=imageless)
    merged = out_dir / "predictions.jsonl"
    mine = merged if world == 1 else out_dir / f"predictions.rank{rank}.jsonl"
    answer_items(model, items[rank::world], mine, provenance, restart=restart, batch_size=batch_size,
                 max_new_tokens=max_new_tokens, progress=progress and rank == 0, imageless=imageless)
    if world > 1:
        dist.barrier()
        if rank == 0:
            lines = [provenance_line(provenance)]
            for r in range(world):  # each rank file: its own (equal) provenance record, then answers
                lines += (out_dir / f"predictions.rank{r}.jsonl").read_text().splitlines(keepends=True)[1:]
            with atomic_write(merged, "w") as f:
                f.writelines(lines)
        dist.barrier()
    result = score_predictions(task, data_dir, merged, variant=variant, split=split,
                               only_answered=limit is not None)
    if rank == 0:
        with atomic_write(out_dir / "results.md", "w") as f:
            f.write(render_markdown([result]))
        with atomic_write(out_dir / "results.json", "w") as f:
            f.write(render_json([result]))
    return result
