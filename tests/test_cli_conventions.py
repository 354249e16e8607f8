"""The command line's conventions: --version, `python -m visualrwkv`, help without heavy imports, the
generated `train --help`, readable served model names, --served-model-name."""

import subprocess
import sys
from dataclasses import fields

import pytest

import visualrwkv
from visualrwkv.cli import COMMANDS, main
from visualrwkv.hub import readable_name
from visualrwkv.train.cli import options_help
from visualrwkv.train.config import FITTED, TrainConfig


def run_module(*args, code=None):
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "visualrwkv", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_version_and_python_dash_m():
    done = run_module("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"visualrwkv {visualrwkv.__version__}"
    done = run_module("--help")
    assert done.returncode == 0
    for name in COMMANDS:
        assert f"\n    {name} " in done.stdout  # every command listed with its line
    assert "VISUALRWKV_MODEL" in done.stdout


def test_help_imports_no_torch():
    """What keeps --help instant (its time is measured with farm-bench, not asserted here)."""
    probe = ("import sys, contextlib, io\nfrom visualrwkv.cli import main\n"
             "for argv in ([], ['train'], ['ask'], ['chat'], ['serve'], ['eval'], ['demo'], ['convert']):\n"
             "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
             "        main([*argv, '--help'])\n"
             "print(sorted(m for m in ('torch', 'numpy', 'transformers', 'fastapi', 'gradio') if m in sys.modules))")
    done = run_module(code=probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_train_help_lists_every_option_with_type_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for f in fields(TrainConfig):
        assert f"--{f.name} {f.type.upper()}" in text and f.metadata["help"]
    assert "(default: 1e-05)" in text and "--lr_final FLOAT" in text
    with pytest.raises(SystemExit):
        main(["train", "--config", "finetune", "--help"])
    text = capsys.readouterr().out
    assert "preset finetune:" in text and "(default: tiny)" in text
    assert options_help("finetune", width=300).count("(default: fitted, see fit_to_data)") == len(FITTED)
    stage1 = options_help("stage1", width=200)
    assert "(default: proj.*)" in stage1 and "(default: first)" in stage1
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", "nope", "--help"])
    assert exit_.value.code == 2 and "neither a preset" in capsys.readouterr().err


def test_train_without_config_or_data_is_a_clear_error(capsys):
    assert main(["train"]) == 1
    assert "--config is required" in capsys.readouterr().err
    assert main(["train", "--config", "finetune"]) == 1
    assert "set --data" in capsys.readouterr().err


def test_readable_model_names(tmp_path):
    (tmp_path / "runs" / "finetune" / "final").mkdir(parents=True)
    (tmp_path / "VisualRWKV-v060-1B6-v1.0.pth").write_bytes(b"")
    (tmp_path / "x_rwkv.pth").write_bytes(b"")
    assert readable_name("tiny") == "visualrwkv-tiny" == readable_name(visualrwkv.TINY_MODEL)
    assert readable_name(tmp_path / "runs" / "finetune" / "final") == "finetune"
    assert readable_name(tmp_path / "VisualRWKV-v060-1B6-v1.0.pth") == "VisualRWKV-v060-1B6-v1.0"
    assert readable_name(tmp_path / "x_rwkv.pth") == "x"
    assert readable_name("org/name@v2") == "org/name"
    assert readable_name("org/name/ckpt/VisualRWKV-6.pth") == "org/name/VisualRWKV-6"


def test_served_model_name(tiny_vlm_dir, monkeypatch):
    from visualrwkv.cli import build_parser
    from visualrwkv.serve.cli import build_engine

    args = build_parser("serve").parse_args(["serve", "--model", str(tiny_vlm_dir), "--served-model-name", "my-vlm"])
    with build_engine(args) as engine:
        assert engine.model_id == "my-vlm"
    args = build_parser("serve").parse_args(["serve", "--served-model-name", " "])
    with pytest.raises(ValueError, match="--served-model-name must not be empty"):
        build_engine(args)
    monkeypatch.setenv("VISUALRWKV_MODEL", str(tiny_vlm_dir))  # the default model, from the environment
    with build_engine(build_parser("serve").parse_args(["serve"])) as engine:
        assert engine.model_id == "tiny-vlm"


def test_eval_help_shows_the_working_forms_and_heldout_prints_all_once(capsys):
    from visualrwkv.eval.heldout import HeldoutResult

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "visualrwkv eval --task pope --data DIR" in text and "visualrwkv eval score --task" in text
    untyped = HeldoutResult(0.5, 4, {"all": {"accuracy": 0.5, "correct": 2, "total": 4}})
    assert untyped.markdown().splitlines()[2:] == ["| **all** | **50.0%** | 2 / 4 |"]
    typed = HeldoutResult(0.75, 4, {"color": {"accuracy": 1.0, "correct": 2, "total": 2},
                                    "count": {"accuracy": 0.5, "correct": 1, "total": 2}})
    assert typed.markdown().splitlines()[2:] == ["| color | 100.0% | 2 / 2 |", "| count | 50.0% | 1 / 2 |",
                                                 "| **all** | **75.0%** | 3 / 4 |"]
