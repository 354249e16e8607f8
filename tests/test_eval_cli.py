"""`visualrwkv eval ...` through the real entry point, with only this command module registered."""

import json

import pytest

from visualrwkv import cli


@pytest.fixture
def main(monkeypatch):
    # only the named command's module is imported (cli.COMMANDS), so the others are not under test here
    return cli.main


def test_fixture_then_score(main, tmp_path, capsys):
    assert main(["eval", "fixture", "--task", "pope", "--out", str(tmp_path / "pope"), "--n", "2"]) == 0
    assert "pope: wrote" in capsys.readouterr().out
    out = tmp_path / "res" / "results.json"
    argv = ["eval", "score", "--task", "pope", "--data", str(tmp_path / "pope"),
            "--predictions", str(tmp_path / "pope" / "oracle_predictions.jsonl"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| pope | test | 100.00 | F1 (%) averaged over 3 split(s) | llava | 6 | 0 |" in printed
    [result] = json.loads(out.read_text())
    assert result["task"] == "pope" and result["score"] == 100.0 and result["variant"] == "llava"


def test_score_variant_and_errors(main, tmp_path, capsys):
    data = tmp_path / "vqav2"
    assert main(["eval", "fixture", "--task", "vqav2", "--out", str(data), "--n", "2"]) == 0
    oracle = str(data / "oracle_predictions.jsonl")
    assert main(["eval", "score", "--task", "vqav2", "--data", str(data), "--predictions", oracle,
                 "--variant", "evalai"]) == 0  # fmt: skip
    assert "| vqav2 | val | 100.00 | VQA accuracy (%) | evalai |" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 77, "text": "yes"}\n')
    assert main(["eval", "score", "--task", "vqav2", "--data", str(data), "--predictions", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "visualrwkv eval: error:" in err and "bad.jsonl:1: question_id 77 round 0 is not a vqav2 val question" in err
    assert main(["eval", "score", "--task", "vqav2", "--data", str(data), "--predictions", oracle,
                 "--variant", "nope"]) == 1  # fmt: skip
    assert "unknown scorer variant 'nope'" in capsys.readouterr().err


def test_submission_and_layout(main, tmp_path, capsys):
    data = tmp_path / "vqav2"
    assert main(["eval", "fixture", "--task", "vqav2", "--out", str(data), "--n", "2"]) == 0
    line = (data / "llava_vqav2_mscoco_test-dev2015.jsonl").read_text().splitlines()[0]
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"question_id": json.loads(line)["question_id"], "text": "Three"}) + "\n")
    out = tmp_path / "sub.json"
    assert main(["eval", "submission", "--data", str(data), "--predictions", str(preds), "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["answer"] == "3"
    assert main(["eval", "layout"]) == 0
    assert "coco/coco_pope_{adversarial,popular,random}.json" in capsys.readouterr().out


def test_bare_eval_prints_help(main, capsys):
    assert main(["eval"]) == 2
    assert "score" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", "score", "--task", "vizwiz", "--data", ".", "--predictions", "p"])
