"""Test-only placeholder for torchvision, so timm and segment_anything import on this CPU (SPEC §13.1).

The real torchvision wheel cannot load here (its extension links CUDA). timm and segment_anything only
import it for data transforms and ops that the oracle tests never call, so a meta-path finder hands
out placeholder `torchvision.*` modules whose every attribute is an inert class. `installed()` puts
the finder in place for a block and removes it and the placeholders afterwards, so nothing else in
the test session (e.g. transformers' torchvision checks) ever sees them.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import types

ROOT = "torchvision"


class _InertMeta(type):
    """Classes whose attributes are again inert classes (`InterpolationMode.BICUBIC`, ...)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _inert(name)


def _inert(name: str) -> type:
    return _InertMeta(name, (), {"__init__": lambda self, *a, **k: None,
                                 "__call__": lambda self, *a, **k: None})


class _StandinModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _inert(name)
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == ROOT or fullname.startswith(ROOT + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandinModule(spec.name)
        module.__path__ = []
        if spec.name == ROOT:
            module.__version__ = "0.0.0+standin"
        return module

    def exec_module(self, module):
        pass


@contextlib.contextmanager
def installed():
    try:
        import torchvision  # noqa: F401  (a working real one: nothing to stand in for)

        yield
        return
    except Exception:
        pass
    for name in [n for n in sys.modules if n == ROOT or n.startswith(ROOT + ".")]:
        del sys.modules[name]  # a failed real import may have left pieces behind
    finder = _Finder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == ROOT or n.startswith(ROOT + ".")]:
            del sys.modules[name]
