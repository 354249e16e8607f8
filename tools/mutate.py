"""Mutation check of the core modules: does each module's own test file fail when its code is changed?

    python tools/mutate.py                       # the five core modules
    python tools/mutate.py engine/sampling.py    # one module
    python tools/mutate.py --list prompts.py     # only list its mutants

For one module at a time, every single-point change of its AST is made in turn (comparison, arithmetic,
boolean and unary operator swaps, constant changes, deletion of one statement in a function body), written into a
temporary copy of the tree (the real tree is never edited), and the module's own tests (MODULE_TESTS) are run on
it with -x and a timeout. A mutant is *killed* when they fail (or time out), *survives* when they pass.
Not mutated, because no test could or should tell: docstrings, annotations and Literal[...] aliases, imports,
the text of raised errors and f-string pieces (tests match messages by a key phrase), and the minus of dim=-1
(the same axis as dim=1 of the 2-D tensors here). Survivors known to be equivalent (no behaviour changes) are
listed, each with why, in
tests/mutation_equivalent.txt and counted apart. Exit status 1 when a module's score (killed / non-equivalent)
is under --min-score.

Speed: the parent imports torch, numpy, pytest and hypothesis once and forks one child per mutant, so each run
costs only the tests themselves. Not run in CI (make mutation); run it under `flock -s /work/cpu.lock` on a shared
machine.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "src/visualrwkv"
EQUIVALENT_FILE = ROOT / "tests" / "mutation_equivalent.txt"

# module (relative to src/visualrwkv) -> its own test files: the ones that exist to pin its behaviour
MODULE_TESTS = {
    "eval/normalize.py": ["tests/test_eval_normalize.py"],
    "eval/metrics.py": ["tests/test_eval_metrics.py", "tests/test_eval_parsers.py"],
    "engine/sampling.py": ["tests/test_engine_sampling.py"],
    "engine/stream.py": ["tests/test_engine_stream.py", "tests/test_engine_sampling.py"],
    "prompts.py": ["tests/test_prompts.py"],
}
CORE_MODULES = list(MODULE_TESTS)

_COMPARE_SWAPS = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip
_BINOP_SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
    ast.LShift: ast.RShift, ast.RShift: ast.LShift, ast.MatMult: ast.Mult,
}  # fmt: skip
_DELETABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Raise, ast.Continue, ast.Break)


def _mutated_constant(value):
    """The changed value of a constant, or None when it is left alone."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 if value else 1.0
    if isinstance(value, str):
        return value + "X"
    if isinstance(value, bytes):
        return value + b"X"
    return None


def _unmutated_nodes(tree: ast.AST) -> set[int]:
    """Ids of nodes whose change means nothing to behaviour or only rewords a message: docstrings,
    annotations, the text of raised errors, f-string pieces."""
    skip: set[int] = set()

    def skip_all(node):
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                skip_all(body[0])  # docstring
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip_all(node.returns)
        elif isinstance(node, ast.arg):
            skip_all(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            skip_all(node.annotation)
        elif isinstance(node, ast.JoinedStr):
            skip.update(id(n) for n in node.values if isinstance(n, ast.Constant))
        elif isinstance(node, ast.Raise):
            skip.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Constant, ast.JoinedStr)))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            skip_all(node)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Literal":
            skip_all(node)  # a type alias such as Literal["first", "last"]: read by type checkers only
        elif isinstance(node, ast.Call):
            # dim=-1 and dim=1 name the same axis of the 2-D [batch, vocab] tensors these modules work on, so
            # dropping that minus is an equivalent mutant every time: not made (dim=-2, the constant changed, is)
            for kw in node.keywords:
                if kw.arg in ("dim", "axis") and _is_minus_one(kw.value):
                    skip.add(id(kw.value))
            method = node.func.attr if isinstance(node.func, ast.Attribute) else None
            if method in _DIM_FIRST_METHODS and node.args and _is_minus_one(node.args[0]):
                skip.add(id(node.args[0]))
    return skip


# tensor methods whose first positional argument is a dimension
_DIM_FIRST_METHODS = {"gather", "scatter", "scatter_", "cumsum", "argmax", "argmin", "flip", "softmax", "log_softmax"}


def _is_minus_one(node) -> bool:
    return (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
            and node.operand.value == 1)


class _Mutator(ast.NodeTransformer):
    """Walks the tree in a fixed order, numbering every possible change; applies the one numbered `target`."""

    def __init__(self, tree: ast.AST, target: int = -1):
        self.target = target
        self.sites: list[tuple[int, str]] = []
        self._skip = _unmutated_nodes(tree)
        self._in_function = 0

    def _site(self, node: ast.AST, description: str) -> bool:
        if id(node) in self._skip:
            return False
        self.sites.append((node.lineno, description))
        return len(self.sites) - 1 == self.target

    def _visit_function(self, node):
        self._in_function += 1
        self.generic_visit(node)
        self._in_function -= 1
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def generic_visit(self, node):
        # statement deletion: each deletable statement of a function body becomes `pass`
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list) or not self._in_function:
                continue
            for i, stmt in enumerate(stmts):
                if isinstance(stmt, _DELETABLE) and id(stmt) not in self._skip:
                    kind = type(stmt).__name__
                    if self._site(stmt, f"delete {kind}"):
                        stmts[i] = ast.copy_location(ast.Pass(), stmt)
        return super().generic_visit(node)

    def visit_Compare(self, node):
        self.generic_visit(node)
        for i, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap and self._site(node, f"{type(op).__name__} -> {swap.__name__}"):
                node.ops[i] = swap()
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap and self._site(node, f"{type(node.op).__name__} -> {swap.__name__}"):
            node.op = swap()
        return node

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        swap = _BINOP_SWAPS.get(type(node.op))
        if swap and self._site(node, f"{type(node.op).__name__}= -> {swap.__name__}="):
            node.op = swap()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        swap = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._site(node, f"{type(node.op).__name__} -> {swap.__name__}"):
            node.op = swap()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, (ast.Not, ast.USub, ast.Invert)) and id(node) not in self._skip:
            if self._site(node, f"drop {type(node.op).__name__}"):
                return node.operand
        return node

    def visit_Constant(self, node):
        if id(node) in self._skip or node.value is None or node.value is Ellipsis:
            return node
        new = _mutated_constant(node.value)
        if new is not None and self._site(node, f"constant {node.value!r} -> {new!r}"):
            return ast.copy_location(ast.Constant(new), node)
        return node


@dataclass
class Mutant:
    index: int
    line: int
    description: str
    key: str  # "<source line> :: <description>", stable while the line's text is unchanged


def list_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    mutator = _Mutator(tree)
    mutator.visit(tree)
    lines = source.splitlines()
    mutants, seen = [], {}
    for i, (line, description) in enumerate(mutator.sites):
        key = f"{lines[line - 1].strip()} :: {description}"
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            key += f" #{seen[key]}"
        mutants.append(Mutant(i, line, description, key))
    return mutants


def mutated_source(source: str, index: int) -> str:
    tree = ast.parse(source)
    _Mutator(tree, target=index).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree))


def read_equivalent(path: Path = EQUIVALENT_FILE) -> dict[str, dict[str, str]]:
    """module -> {mutant key -> why}; lines are `module :: source line :: description :: why`."""
    out: dict[str, dict[str, str]] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = raw.split(" :: ")
        if len(parts) < 4:
            raise SystemExit(f"{path}:{n}: expected 'module :: source line :: mutation :: why'")
        module, why = parts[0].strip(), parts[-1].strip()
        out.setdefault(module, {})[" :: ".join(parts[1:-1]).strip()] = why
    return out


def _run_child(workdir: Path, tests: list[str], timeout: float) -> str:
    """'killed' / 'survived' / 'timeout' for the tree as it is now in `workdir`."""
    import pytest

    pid = os.fork()
    if pid == 0:  # child: quiet, own process group, run the tests, exit with their status
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            rc = pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"])
        except BaseException:  # noqa: BLE001 - anything escaping is a failure of the mutant
            rc = 99
        os._exit(int(rc))
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
            if time.monotonic() > deadline:
                _kill_child(pid)
                return "timeout"
            time.sleep(0.02)
    except BaseException:  # Ctrl-C: the child (its own process group) goes too
        _kill_child(pid)
        raise


def _kill_child(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def run_module(module: str, workdir: Path, equivalent: dict[str, str], timeout: float | None, verbose: bool):
    tests = MODULE_TESTS[module]
    target = workdir / PACKAGE / module
    source = (ROOT / PACKAGE / module).read_text(encoding="utf-8")
    mutants = list_mutants(source)

    start = time.monotonic()
    baseline = _run_child(workdir, tests, timeout=600)
    took = time.monotonic() - start
    if baseline != "survived":
        raise SystemExit(f"{module}: its tests {tests} fail on the unmutated tree; fix them first")
    per_mutant = timeout or max(20.0, 3 * took)

    counts = {"killed": 0, "survived": 0, "equivalent": 0}
    survivors: list[Mutant] = []
    try:
        for m in mutants:
            target.write_text(mutated_source(source, m.index), encoding="utf-8")
            outcome = _run_child(workdir, tests, per_mutant)
            if outcome == "timeout":
                outcome = "killed"
            if m.key in equivalent:
                if outcome == "survived":
                    outcome = "equivalent"
                else:  # a test tells it apart, so it is no equivalent: counted killed, the listing is wrong
                    print(f"  note: listed as equivalent but killed: {module} :: {m.key}")
            counts[outcome] += 1
            if outcome == "survived":
                survivors.append(m)
            if verbose or outcome == "survived":
                print(f"  {outcome:>10}  {module}:{m.line}  {m.description}", flush=True)
    finally:
        target.write_text(source, encoding="utf-8")
    stale = sorted(set(equivalent) - {m.key for m in mutants})
    return counts, survivors, stale, len(mutants)


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "*.egg-info")
    shutil.copytree(ROOT / "src", dest / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules under {PACKAGE} (default: {' '.join(CORE_MODULES)})")
    parser.add_argument("--list", action="store_true", help="only list the mutants (index, line, change)")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default: 3x the clean run, >= 20)")
    parser.add_argument("--min-score", type=float, default=95.0, help="per-module %% of non-equivalent killed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every mutant, not only survivors")
    args = parser.parse_args(argv)
    modules = args.modules or CORE_MODULES
    for module in modules:
        if module not in MODULE_TESTS:
            parser.error(f"no tests known for {module!r}; known: {', '.join(MODULE_TESTS)}")

    if args.list:
        for module in modules:
            for m in list_mutants((ROOT / PACKAGE / module).read_text(encoding="utf-8")):
                print(f"{module}:{m.line}\t#{m.index}\t{m.key}")
        return 0

    equivalent = read_equivalent()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HYPOTHESIS_DATABASE", "none")
    sys.dont_write_bytecode = True  # the mutated file must be compiled afresh by every child
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="visualrwkv-mutants-") as tmp:
        workdir = Path(tmp)
        _copy_tree(workdir)
        os.chdir(workdir)
        sys.path.insert(0, str(workdir / "src"))
        # imported once here, inherited by every forked child; visualrwkv itself is imported only in the children
        import hypothesis  # noqa: F401
        import numpy  # noqa: F401
        import pytest  # noqa: F401
        import torch  # noqa: F401

        for module in modules:
            print(f"{module}: running {' '.join(MODULE_TESTS[module])}", flush=True)
            counts, survivors, stale, total = run_module(
                module, workdir, equivalent.get(module, {}), args.timeout, args.verbose
            )
            for key in stale:
                print(f"  note: listed as equivalent but no longer a mutant: {key}")
            real = total - counts["equivalent"]
            score = 100.0 * counts["killed"] / real if real else 100.0
            failed |= score < args.min_score
            rows.append((module, total, counts["killed"], counts["survived"], counts["equivalent"], score))
            for m in survivors:
                print(f"  survivor: {module} :: {m.key}")

    print()
    print(f"{'module':<22}{'mutants':>8}{'killed':>8}{'survived':>10}{'equivalent':>12}{'score':>8}")
    for module, total, killed, survived, eq, score in rows:
        print(f"{module:<22}{total:>8}{killed:>8}{survived:>10}{eq:>12}{score:>7.1f}%")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
