"""End to end: fixture datasets in each benchmark's layout → `visualrwkv eval` with the shipped model
→ a score table; a run killed half-way resumes and ends with the same table."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from visualrwkv.cli import main
from visualrwkv.engine.defaults import DEFAULT_MODEL_DIR
from visualrwkv.eval.benchmarks import TASK_NAMES, build_fixture, score_predictions
from visualrwkv.eval.items import EvalDataError
from visualrwkv.eval.run import _read_done

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "config.json").is_file(), reason="no shipped model")


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_runs_end_to_end(task, tmp_path, capsys):
    data = tmp_path / "data"
    build_fixture(task, data, n=2)
    assert main(["eval", "--task", task, "--data", str(data), "--out", str(tmp_path / "out"), "--batch-size", "4",
                 "--max-new-tokens", "8"]) == 0
    table = capsys.readouterr().out
    assert "|" in table and task in table.lower()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results[0]["task"] == task and results[0]["n_missing"] == 0
    # the score reported is exactly the scorer's score of the answers the run wrote
    rescored = score_predictions(task, data, tmp_path / "out" / "predictions.jsonl", variant=results[0]["variant"])
    assert results[0]["score"] == rescored.score
    assert 0.0 <= results[0]["score"] <= (2000.0 if task == "mme" else 100.0)


class _AnswerEveryQuestion:
    """Stands in for the engine inside `answer_items`: answers `text` to every prompt, at once."""

    text = "Yes"

    def __init__(self, model, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def build_prompt(self, *args, **kwargs):
        return args

    def submit(self, prompt, params):
        answer = type(self).text

        class Handle:
            def result(self):
                return type("Result", (), {"text": answer})()

        return Handle()


@pytest.mark.parametrize("answer", ["Yes", "No"])
def test_pope_run_score_is_exact_for_known_answers(answer, tmp_path, monkeypatch):
    # every question answered `answer`: per split F1 (in %) follows from the labels alone, worked out here
    import visualrwkv.engine.engine as engine_module
    from visualrwkv.eval.benchmarks import read_items
    from visualrwkv.eval.run import run_eval

    data = tmp_path / "data"
    build_fixture("pope", data, n=6, seed=3)
    monkeypatch.setattr(_AnswerEveryQuestion, "text", answer)
    monkeypatch.setattr(engine_module, "Engine", _AnswerEveryQuestion)
    result = run_eval("pope", data, tmp_path / "out", progress=False)
    f1s = {}
    for item in read_items("pope", data):
        f1s.setdefault(item.meta["split"], []).append(item.meta["label"])
    expected = {}
    for split, labels in f1s.items():
        yes = labels.count("yes")
        if answer == "Yes":  # precision = yes / n, recall = 1
            precision = yes / len(labels)
            expected[split] = 100 * 2 * precision / (precision + 1) if yes else 0.0
        else:  # nothing predicted "yes": precision, recall and F1 are 0
            expected[split] = 0.0
    assert result.score == pytest.approx(sum(expected.values()) / len(expected))
    assert (result.score > 0) == (answer == "Yes")  # the fixture has "yes" labels: the check is not 0 == 0
    for split, f1 in expected.items():
        assert result.breakdown[split]["f1"] == pytest.approx(f1)
        assert result.breakdown[split]["yes_ratio"] == (100.0 if answer == "Yes" else 0.0)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written[0]["score"] == result.score


def test_killed_run_resumes_to_the_same_table(tmp_path):
    data = tmp_path / "data"
    build_fixture("pope", data, n=12)
    cmd = [sys.executable, "-m", "visualrwkv.cli", "eval", "run", "--task", "pope", "--data", str(data),
           "--batch-size", "2", "--max-new-tokens", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = subprocess.run(cmd + ["--out", str(tmp_path / "straight")], env=env, capture_output=True, text=True,
                              timeout=600)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    predictions = tmp_path / "killed" / "predictions.jsonl"
    deadline = time.time() + 300
    while not (predictions.is_file() and len(predictions.read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.time() < deadline, "eval ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(predictions, "a") as f:
        f.write('{"question_id": "torn')  # what a kill in the middle of a write leaves
    resumed = subprocess.run(cmd + ["--out", str(tmp_path / "killed")], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "killed" / "results.md").read_text() == (tmp_path / "straight" / "results.md").read_text()
    header, *lines = predictions.read_text().splitlines()
    assert "provenance" in json.loads(header)  # the record written before the kill, kept
    assert len(lines) == len({(json.loads(x)["question_id"], json.loads(x).get("round_id", 0)) for x in lines})


def _eval(tmp_path, capsys, *extra, task="pope"):
    data = tmp_path / f"data_{task}"
    if not data.is_dir():
        build_fixture(task, data, n=2)
    code = main(["eval", "run", "--task", task, "--data", str(data), "--out", str(tmp_path / "out"),
                 "--batch-size", "4", "--max-new-tokens", "4", *extra])
    return code, capsys.readouterr()


def test_predictions_of_another_run_are_refused_not_resumed(tmp_path, capsys):
    assert _eval(tmp_path, capsys)[0] == 0
    predictions = tmp_path / "out" / "predictions.jsonl"
    first = json.loads(predictions.read_text().splitlines()[0])["provenance"]
    assert (first["task"], first["split"], first["prompt"], first["dtype"]) == ("pope", "test", "bundle", "float32")
    assert (first["decoding"], first["max_new_tokens"], len(first["model"])) == ("greedy", 4, 16)
    n_lines = len(predictions.read_text().splitlines())
    # the same run again resumes: nothing to answer, the same file
    assert _eval(tmp_path, capsys)[0] == 0
    assert len(predictions.read_text().splitlines()) == n_lines
    for extra, changed in [(("--dtype", "bfloat16"), "dtype 'float32' -> 'bfloat16'"),
                           (("--max-new-tokens", "5"), "max_new_tokens 4 -> 5")]:  # fmt: skip
        code, out = _eval(tmp_path, capsys, *extra)
        assert code == 1 and changed in out.err and "--restart" in out.err and len(out.err.splitlines()) == 1
    code, out = _eval(tmp_path, capsys, task="mme")
    assert code == 1 and "task 'pope' -> 'mme'" in out.err and "split" not in out.err
    # --restart starts over, and the file then records the new run
    assert _eval(tmp_path, capsys, "--dtype", "bfloat16", "--restart")[0] == 0
    assert json.loads(predictions.read_text().splitlines()[0])["provenance"]["dtype"] == "bfloat16"
    assert len(predictions.read_text().splitlines()) == n_lines


def test_answers_without_a_provenance_record_are_refused(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.jsonl").write_text('{"question_id": 1, "text": "yes"}\n')
    code, out = _eval(tmp_path, capsys)
    assert code == 1 and "do not record what produced them" in out.err and len(out.err.splitlines()) == 1


def test_another_prompt_style_or_split_is_another_run(tmp_path, capsys):
    assert _eval(tmp_path, capsys, task="textvqa")[0] == 0
    code, out = _eval(tmp_path, capsys, "--prompt", "none", task="textvqa")
    assert code == 1 and "prompt 'llava' -> 'none'" in out.err
    assert _eval(tmp_path / "v", capsys, "--limit", "2", task="vqav2")[0] == 0
    code, out = _eval(tmp_path / "v", capsys, "--split", "testdev", task="vqav2")
    assert code == 1 and "split 'val' -> 'testdev'" in out.err


HEADER = '{"provenance": {"task": "pope"}}\n'


def test_resume_keeps_a_complete_last_line_without_newline(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(HEADER + '{"question_id": 1, "text": "yes"}\n{"question_id": 2, "text": "no"}')
    assert _read_done(path) == ({"task": "pope"}, {("1", 0), ("2", 0)})
    # the newline is added, so the next answer starts its own line
    assert path.read_text() == HEADER + '{"question_id": 1, "text": "yes"}\n{"question_id": 2, "text": "no"}\n'


def test_resume_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(HEADER + '{"question_id": 1, "text": "yes"}\n{"question_id": 2, "te')
    assert _read_done(path) == ({"task": "pope"}, {("1", 0)})
    assert path.read_text() == HEADER + '{"question_id": 1, "text": "yes"}\n'
    path.write_text('{"provenance": {"ta')  # torn in the record itself: as if nothing was written
    assert _read_done(path) == (None, set()) and path.read_text() == ""


def test_a_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question_id": 1, "text": "yes"}\nnot json\n{"question_id": 2, "text": "no"}\n')
    with pytest.raises(EvalDataError, match=r"p.jsonl:2"):
        _read_done(path)


def test_model_fingerprint_tells_weights_apart_not_layouts():
    import torch

    from visualrwkv.engine.defaults import load_model
    from visualrwkv.eval.provenance import model_fingerprint
    from visualrwkv.model import VisualRWKV

    loaded = load_model()  # inference layout (input-major projection matrices)
    plain = VisualRWKV.from_pretrained(DEFAULT_MODEL_DIR)
    assert model_fingerprint(loaded) == model_fingerprint(plain)
    with torch.no_grad():
        next(p for n, p in plain.named_parameters() if n.endswith("weight") and p.dim() == 2)[0, 0] += 1.0
    assert model_fingerprint(plain) != model_fingerprint(loaded)


@pytest.mark.parametrize("imageless", ["text-only", "blank-image"])
def test_imageless_questions_follow_the_chosen_official_path(imageless, tmp_path):
    """ScienceQA's text problems: by default a text prompt (in the model's text-only layout); with
    --imageless blank-image, `<image>\\n` + the question and all-zero pixels through the encoder."""
    import torch

    from visualrwkv.engine.defaults import load_model
    from visualrwkv.eval.benchmarks import read_items
    from visualrwkv.eval.tasks.common import with_image
    from visualrwkv.prompts import build_inference_prompt

    data = tmp_path / "data"
    build_fixture("scienceqa", data, n=2)
    assert main(["eval", "--task", "scienceqa", "--data", str(data), "--out", str(tmp_path / "out"),
                 "--max-new-tokens", "8", "--imageless", imageless]) == 0
    predictions = {json.loads(x)["question_id"]: json.loads(x)["text"]
                   for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[1:]}  # after the provenance record
    model = load_model()
    textual = [item for item in read_items("scienceqa", data) if item.image is None]
    assert textual
    for item in textual:
        blank = imageless == "blank-image"
        text = with_image(item.text) if blank else item.text
        ids = build_inference_prompt(text, model.config.image_position, has_image=blank, tokenizer=model.tokenizer)
        with torch.no_grad():
            tokens = model.generate_greedy(ids, [model.vit.blank_pixels()[0]] if blank else [], max_new_tokens=8)
        assert predictions[item.question_id] == model.tokenizer.decode(tokens).split("\n\n")[0].strip()
