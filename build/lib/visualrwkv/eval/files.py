"""Reading benchmark files with errors that name the file, the line and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from visualrwkv.eval.items import EvalDataError, data_error


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise EvalDataError(f"{path}: missing {what}")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise EvalDataError(f"{path}: missing {what} (a directory)")
    return path


def read_json(path: Path, what: str) -> Any:
    require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise data_error(path, e.lineno, f"invalid JSON in {what}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise data_error(path, None, f"{what} is not UTF-8 text ({e.reason})") from None


def iter_jsonl(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each non-blank line; every line must be a JSON object."""
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise data_error(path, line_no, f"invalid JSON in {what}: {e.msg}") from None
            if not isinstance(obj, dict):
                raise data_error(path, line_no, f"each line of {what} must be a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def field_of(obj: dict, name: str, kind: type | tuple[type, ...], path: Path, where: int | str | None) -> Any:
    """`obj[name]`, checked for presence and type (bool is refused where int is asked: JSON true is not an id)."""
    if name not in obj:
        raise data_error(path, where, f"missing field {name!r}")
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise data_error(path, where, f"field {name!r} must be {want}, got {type(value).__name__} {value!r}")
    return value


def image_file(root: Path, relative: str, path: Path, where: int | str | None) -> Path:
    """`root / relative`, which must exist; the error names the file that referenced it."""
    if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise data_error(path, where, f"image path {relative!r} must be a relative path inside {root}")
    image = root / relative
    if not image.is_file():
        raise data_error(path, where, f"image file {image} does not exist")
    return image


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
