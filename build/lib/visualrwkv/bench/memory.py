"""Peak memory of the current process: RSS high-water mark on CPU, allocator peak on CUDA.

On Linux the RSS high-water mark can be reset (writing 5 to /proc/self/clear_refs), so a
measurement excludes the transient memory of building the models; elsewhere the peak falls back to
`ru_maxrss`, which counts since the process started (the `method` field says which was used).
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS reflects live memory."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.method = "cuda max_memory_allocated" if self.device.type == "cuda" else "ru_maxrss (since process start)"

    def reset(self) -> None:
        release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")
            if _status_kib("VmHWM") is not None:
                self.method = "VmHWM (RSS high-water mark, reset after model build)"
        except OSError:
            pass

    def current_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        kib = _status_kib("VmRSS")
        if kib is None:  # no /proc (macOS): the high-water mark is the best available figure
            return self.peak_bytes()
        return kib * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.method.startswith("VmHWM"):
            return _status_kib("VmHWM") * 1024
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux
