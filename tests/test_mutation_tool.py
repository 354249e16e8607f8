"""tools/mutate.py (make mutation): its mutants and its list of equivalent ones stay in step with the code.

The mutation run itself is not part of the suite (minutes of CPU); these checks only parse the sources.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import mutate  # noqa: E402


def _source(module: str) -> str:
    return (ROOT / mutate.PACKAGE / module).read_text(encoding="utf-8")


def test_every_core_module_and_its_tests_exist():
    assert mutate.CORE_MODULES == [
        "eval/normalize.py", "eval/metrics.py", "engine/sampling.py", "engine/stream.py", "prompts.py",
    ]
    for module, tests in mutate.MODULE_TESTS.items():
        assert (ROOT / mutate.PACKAGE / module).is_file(), module
        for test in tests:
            assert (ROOT / test).is_file(), test


def test_the_unseeded_generator_deletion_is_a_mutant():
    # the gap that started the mutation check: deleting generator.seed() must stay among the mutants made
    mutants = {m.key: m for m in mutate.list_mutants(_source("engine/sampling.py"))}
    m = mutants["generator.seed() :: delete Expr"]
    changed = mutate.mutated_source(_source("engine/sampling.py"), m.index)
    assert "generator.seed()" not in changed and "generator.manual_seed(params.seed)" in changed


def test_one_mutant_changes_one_place():
    source = "def f(a, b):\n    x = a + b\n    return x < 3\n"
    index = {m.description: m.index for m in mutate.list_mutants(source)}
    assert sorted(index) == ["Add -> Sub", "Lt -> LtE", "constant 3 -> 4", "delete Assign", "delete Return"]
    assert mutate.mutated_source(source, index["Add -> Sub"]) == "def f(a, b):\n    x = a - b\n    return x < 3"
    assert mutate.mutated_source(source, index["constant 3 -> 4"]) == "def f(a, b):\n    x = a + b\n    return x < 4"
    assert mutate.mutated_source(source, index["delete Assign"]) == "def f(a, b):\n    pass\n    return x < 3"


def test_docstrings_annotations_messages_imports_and_literals_are_not_mutated():
    source = (
        'from typing import Literal\n'
        'Side = Literal["a", "b"]\n'
        'def f(n: int = 2) -> str:\n'
        '    """doc"""\n'
        '    if n < 0:\n'
        '        raise ValueError(f"bad n {n}")\n'
        '    return "x"\n'
    )
    # only the code: the default 2, the comparison, the raise and return statements, the returned constant
    descriptions = sorted(m.description for m in mutate.list_mutants(source))
    assert descriptions == [
        "Lt -> LtE", "constant 'x' -> 'xX'", "constant 0 -> 1", "constant 2 -> 3", "delete Raise", "delete Return",
    ]


def test_every_listed_equivalent_mutant_is_a_current_mutant():
    # a line of tests/mutation_equivalent.txt whose source line changed must be re-argued, not kept by accident
    listed = mutate.read_equivalent()
    assert set(listed) <= set(mutate.MODULE_TESTS)
    for module, entries in listed.items():
        keys = {m.key for m in mutate.list_mutants(_source(module))}
        for key, why in entries.items():
            assert key in keys, f"{module} :: {key}"
            assert len(why) > 20, key  # each says why


def test_bad_equivalent_line_is_named(tmp_path):
    bad = tmp_path / "eq.txt"
    bad.write_text("# comment\n\nprompts.py :: x = 1 :: constant 1 -> 2\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="eq.txt:3"):
        mutate.read_equivalent(bad)


@pytest.mark.parametrize("module", ["eval/normalize.py", "eval/metrics.py", "engine/sampling.py",
                                    "engine/stream.py", "prompts.py"])
def test_every_mutant_of_a_core_module_still_parses(module):
    source = _source(module)
    mutants = mutate.list_mutants(source)
    assert len(mutants) > 10
    for m in mutants[:: max(1, len(mutants) // 25)]:
        ast.parse(mutate.mutated_source(source, m.index))
