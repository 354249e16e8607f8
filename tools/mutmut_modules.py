"""The same per-module check with mutmut (a maintained mutation tool), as a cross-check of tools/mutate.py.

    python tools/mutmut_modules.py                 # the five core modules
    python tools/mutmut_modules.py prompts.py      # one

For each module, a temporary copy of the tree gets a [tool.mutmut] section naming that module and its own tests
(MODULE_TESTS of tools/mutate.py), `mutmut run` runs there, and `mutmut results --all true` is counted. The real
tree is never written to (mutmut would put a mutants/ folder in it).

mutmut 3 mutates only code inside functions, so the module-level tables (the punctuation marks, number words, MME
subtask names, candidate levels) are left to tools/mutate.py, which is the one `make mutation` gates on; mutmut's
survivors are printed for reading, not checked against tests/mutation_equivalent.txt (its mutant names are not
stable across edits).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutate import CORE_MODULES, MODULE_TESTS, PACKAGE, ROOT  # noqa: E402


def _mutmut() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        raise SystemExit("mutmut is not installed: pip install -e '.[mutation]'")
    return str(exe)


def run_module(module: str, timeout: float) -> tuple[Counter, list[str]]:
    with tempfile.TemporaryDirectory(prefix="visualrwkv-mutmut-") as tmp:
        work = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "*.egg-info")
        shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
        shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
        tests = ", ".join(f'"{t}"' for t in MODULE_TESTS[module])
        config = (ROOT / "pyproject.toml").read_text(encoding="utf-8") + (
            "\n[tool.mutmut]\n"
            f'source_paths = ["{PACKAGE}/{module}"]\n'
            f"pytest_add_cli_args_test_selection = [{tests}]\n"
            f'also_copy = ["{PACKAGE}", "tests"]\n'
        )
        (work / "pyproject.toml").write_text(config, encoding="utf-8")
        run = subprocess.run([_mutmut(), "run"], cwd=work, capture_output=True, text=True, timeout=timeout)
        if run.returncode != 0:
            raise SystemExit(f"{module}: mutmut run failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
        results = subprocess.run([_mutmut(), "results", "--all", "true"], cwd=work, capture_output=True, text=True,
                                 timeout=120)
        counts: Counter = Counter()
        survivors = []
        for line in results.stdout.splitlines():
            name, _, status = line.strip().rpartition(": ")
            if name:
                counts[status] += 1
                if status == "survived":
                    survivors.append(name)
        return counts, survivors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules under {PACKAGE} (default: the five core ones)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for one module's mutmut run")
    args = parser.parse_args(argv)
    rows = []
    for module in args.modules or CORE_MODULES:
        if module not in MODULE_TESTS:
            parser.error(f"no tests known for {module!r}; known: {', '.join(MODULE_TESTS)}")
        print(f"{module}: mutmut on {' '.join(MODULE_TESTS[module])}", flush=True)
        counts, survivors = run_module(module, args.timeout)
        for name in survivors:
            print(f"  survived: {name}")
        rows.append((module, sum(counts.values()), counts["killed"] + counts["timeout"], counts["survived"],
                     sum(v for k, v in counts.items() if k not in ("killed", "timeout", "survived"))))
    print()
    print(f"{'module':<22}{'mutants':>8}{'killed':>8}{'survived':>10}{'other':>7}")
    for module, total, killed, survived, other in rows:
        print(f"{module:<22}{total:>8}{killed:>8}{survived:>10}{other:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
