"""Small helpers shared by every layer."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def _umask_mode() -> int:
    """The mode a plain `open(path, "w")` would give (mkstemp's temporaries are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _replacing(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside `path`; on success it is fsync'd and renamed over `path`.

    A crash at any point leaves either the old file or the new one, never a torn mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """`with atomic_write(path, "w") as f:` — the file appears whole, or not at all."""
    with _replacing(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_save_file(save_fn: Callable[[str], None], path: str | os.PathLike) -> None:
    """Run `save_fn(tmp_path)` then rename tmp over `path` (for libraries that write by file name)."""
    with _replacing(path) as tmp:
        save_fn(tmp)


@contextlib.contextmanager
def announce_if_slow(message: str, after: float = 2.0, stream=None) -> Iterator[None]:
    """Say `message…` on stderr if the block is still running `after` seconds in, and then how long it
    took, so that no wait is silent while quick ones stay quiet."""
    import sys
    import threading
    import time

    stream = stream or sys.stderr
    start, said = time.perf_counter(), threading.Event()

    def say():
        print(f"{message}…", file=stream, flush=True)
        said.set()

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if said.is_set():
            print(f"{message}: done in {time.perf_counter() - start:.1f} s", file=stream, flush=True)
