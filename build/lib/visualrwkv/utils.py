"""Small helpers shared by every layer."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def why_missing(path: str | os.PathLike) -> str:
    """Why `path` cannot be opened as a file, for an error message: "does not exist", "is a symlink loop", ..."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop"
        if os.path.islink(path):
            return f"is a broken symlink (to {os.readlink(path)!r})"
        if e.errno == errno.ENOENT:
            return "does not exist"
        return f"cannot be read ({e.strerror})"
    return "is a folder" if os.path.isdir(path) else "exists"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    """The mode a plain `open(path, "w")` would give (mkstemp's temporaries are 0600)."""
    return 0o666 & ~current_umask()


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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = disk_full_error(e, path)
        if full is not None:
            raise full from e
        raise


def disk_full_error(error: BaseException, path: str | os.PathLike) -> OSError | None:
    """OSError "no space left on device while writing PATH" when `error` comes from a full disk, else None.

    Writers report it in their own ways: open().write raises OSError(ENOSPC), safetensors a
    SafetensorError quoting the OS error, torch.save a RuntimeError whose context is the OSError."""
    seen = error
    for _ in range(16):  # the chain of causes (bounded: a chain may loop)
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT) or any(
                text in str(seen) for text in ("No space left on device", "Disk quota exceeded")):
            return OSError(errno.ENOSPC, f"no space left on device while writing {path}")
        seen = seen.__cause__ or seen.__context__
    return None


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
