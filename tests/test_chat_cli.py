"""`visualrwkv ask` and `visualrwkv chat` (stdin piped, as a user's script would) against the engine."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from visualrwkv.cli import main
from visualrwkv.engine import defaults
from visualrwkv.engine.engine import Engine, ImageInput
from visualrwkv.engine.sampling import SamplingParams

GREEDY_FLAGS = ["--temperature", "0", "--presence-penalty", "0", "--frequency-penalty", "0", "--max-tokens", "16"]
GREEDY = SamplingParams(temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    red, green = root / "red.png", root / "green.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(red)
    Image.new("RGB", (40, 30), (10, 200, 30)).save(green)
    return red, green


def answer(model, image_path, question, history=()) -> str:
    image = ImageInput.from_path(image_path) if image_path else None
    with Engine(model, cache_bytes=0) as engine:
        return engine.ask(question, image, history, GREEDY).result().text


def test_ask_streams_the_answer(tiny_vlm, tiny_vlm_dir, images, capsys):
    code = main(["ask", "--model", str(tiny_vlm_dir), "--image", str(images[0]), *GREEDY_FLAGS, "What is on the left?"])
    assert code == 0
    assert capsys.readouterr().out == answer(tiny_vlm, images[0], "What is on the left?") + "\n"
    assert main(["ask", "--model", str(tiny_vlm_dir), *GREEDY_FLAGS, "hello"]) == 0  # text only
    assert capsys.readouterr().out == answer(tiny_vlm, None, "hello") + "\n"


def test_ask_errors(tiny_vlm_dir, images, tmp_path, capsys, monkeypatch):
    assert main(["ask", "--model", str(tiny_vlm_dir), "--image", str(tmp_path / "none.png"), "hi"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["ask", "--model", str(tiny_vlm_dir), "--temperature", "-1", "hi"]) == 1
    assert "temperature must be a number in [0.0, 10.0]" in capsys.readouterr().err
    assert main(["ask", "--model", str(tiny_vlm_dir), "  "]) == 1
    assert "the question is empty" in capsys.readouterr().err
    monkeypatch.setattr(defaults, "DEFAULT_MODEL_DIR", tmp_path / "no-model")
    assert main(["ask", "hi"]) == 1
    assert "visualrwkv train --config tiny" in capsys.readouterr().err


def test_chat_with_piped_stdin(tiny_vlm, tiny_vlm_dir, images):
    red, green = images
    first = answer(tiny_vlm, red, "What is on the left?")
    assert first  # a non-empty answer goes into the history
    follow_up = answer(tiny_vlm, red, "And then?", [("What is on the left?", first)])
    other = answer(tiny_vlm, green, "What color is it?")
    script = "\n".join(["What is on the left?", "And then?", "/reset", "What is on the left?", "",
                        f"/image {green}", "What color is it?", "/bogus", "/quit", "never asked"]) + "\n"
    done = subprocess.run([sys.executable, "-m", "visualrwkv.cli", "chat", "--model", str(tiny_vlm_dir),
                           "--image", str(red), *GREEDY_FLAGS], input=script, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{first}\n{follow_up}\n[new conversation]\n{first}\n"
                           f"[new conversation about {green}]\n{other}\n")
    assert "unknown command '/bogus'" in done.stderr


def test_model_flags_pick_dtype_and_layout(tiny_vlm_dir):
    import argparse

    import torch

    from visualrwkv.engine.model_args import add_model_arguments, load_model_from_args

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    model = load_model_from_args(parser.parse_args(["--model", str(tiny_vlm_dir), "--dtype", "bfloat16"]))
    assert model.rwkv.head.weight.dtype == torch.bfloat16 and model.rwkv.state_dict()["head.weight"].dtype == torch.bfloat16
    assert not model.rwkv.head.weight.is_contiguous()  # loaded for inference: the GEMV layout
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "bf17"])


def test_the_bundled_questions_asked_as_follow_ups_get_the_single_turn_answers(example_conversations):
    """The shipped model in `chat` (stdin piped): each example image's questions asked one after the other
    in one conversation (the second and third are follow-ups) get the answers each gets asked alone
    (after /reset), and those are the examples' expected answers. A question is one line in `chat`,
    so its short-answer suffix follows it on the same line."""
    alone, together, expected = [], [], []
    for image, questions in example_conversations:
        lines = [question["question"].replace("\n", " ") for question in questions]
        together += [f"/image {image}", *lines]
        alone += [line for question in lines for line in (f"/image {image}", question)]
        expected += [question["expected"] for question in questions]

    def chat(script: list[str]) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "visualrwkv", "chat", "--model", "tiny", *GREEDY_FLAGS],
                              input="\n".join(script) + "\n", capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if not line.startswith("[new conversation")]

    single_turn = chat(alone)
    assert [answer.lower() for answer in single_turn] == [answer.lower() for answer in expected]
    assert chat(together) == single_turn


def test_default_temperature_follows_the_web_ui_rule(tiny_vlm_dir, tmp_path):
    """No --temperature: greedy for a model trained on short answers (the shipped one: its
    train_config.json says `prepare: shapes`), else SamplingParams' default; a given one is kept."""
    import argparse

    from visualrwkv.chat_cli import add_sampling_arguments, sampling_params_from_args

    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    shapes_model = tmp_path / "shapes_model"
    shapes_model.mkdir()
    (shapes_model / "train_config.json").write_text('{"prepare": "shapes"}')
    for model, expected in ((None, 0.0), ("tiny", 0.0), (str(shapes_model), 0.0),
                            (str(tiny_vlm_dir), SamplingParams().temperature)):
        flags = [] if model is None else ["--model", model]
        assert sampling_params_from_args(parser.parse_args(flags)).temperature == expected, model
        assert sampling_params_from_args(parser.parse_args(flags + ["--temperature", "0.7"])).temperature == 0.7
