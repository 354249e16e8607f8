"""Several images per conversation (the v7 prompt format) through the model, the engine and its cache,
`ask`/`chat`, the OpenAI server, data and evaluation; a v6 model refuses a second image with one line."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from visualrwkv.cli import main
from visualrwkv.engine.cache import make_key
from visualrwkv.engine.engine import Engine, ImageInput
from visualrwkv.engine.sampling import SamplingParams
from visualrwkv.model import VisualRWKVConfig
from visualrwkv.prompts import ConversationError, build_inference_prompt, render_text, tokenize_conversation

GREEDY = SamplingParams(temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0, max_tokens=12)
GREEDY_FLAGS = ["--temperature", "0", "--presence-penalty", "0", "--frequency-penalty", "0", "--max-tokens", "12"]
COLORS = [(200, 30, 30), (10, 200, 30), (30, 40, 220), (230, 200, 20)]


def png(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Four image files (red, green, blue, yellow), each with its bytes."""
    root = tmp_path_factory.mktemp("pictures")
    out = []
    for k, color in enumerate(COLORS):
        path = root / f"c{k}.png"
        path.write_bytes(png(color))
        out.append(path)
    return out


def inputs(paths) -> list[ImageInput]:
    return [ImageInput.from_path(p) for p in paths]


def alone(model, question: str, paths, history=()) -> str:
    """The answer from a fresh engine, no cache, nothing beside it."""
    with Engine(model, cache_bytes=0) as engine:
        return engine.ask(question, inputs(paths), history, GREEDY).result().text


# ---- the v7 prompt format ----------------------------------------------------------------------------------


def test_v7_rendering_puts_one_image_line_per_image_first():
    q = "What is the color of the bus?\nAnswer the question using a single word or phrase."
    one = [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "Red"}]
    assert render_text(one, prompt_format="v7") == f"User: <image>\n{q}\n\nAssistant: Red\n\n"
    # the v6 sandwich of the same row is unchanged
    assert render_text(one) == f"User: What is the color of the bus?\n<image>\n{q}\n\nAssistant: Red\n\n"
    # image_position has no say in v7: tags anywhere in the turn move to its start, one line each
    two = [{"from": "human", "value": "Compare <image> with\n\n<image> please"}, {"from": "gpt", "value": "Same"},
           {"from": "human", "value": "And <image>?"}, {"from": "gpt", "value": "Blue"}]
    expected = ("User: <image>\n<image>\nCompare  with\n please\n\nAssistant: Same\n\n"
                "User: <image>\nAnd ?\n\nAssistant: Blue\n\n")
    for position in ("first", "last", "middle"):
        assert render_text(two, position, prompt_format="v7") == expected
    with pytest.raises(ValueError, match="prompt_format"):
        render_text(one, prompt_format="v8")


def test_v7_inference_prompt_tokens_and_image_count(tok=None):
    from visualrwkv.prompts import default_tokenizer

    tok = default_tokenizer()
    ids = build_inference_prompt("What?", tokenizer=tok, num_images=2, prompt_format="v7")
    assert ids == tok.encode("User: ") + [-200] + tok.encode("\n") + [-200] + tok.encode("\nWhat?\n\n") + \
        tok.encode("Assistant:")
    # tags the caller placed are kept, and must match the images given
    assert build_inference_prompt("<image> and <image>: same?", tokenizer=tok, num_images=2,
                                  prompt_format="v7")[:6] == ids[:6]
    with pytest.raises(ConversationError, match="holds 1 <image> tag"):
        build_inference_prompt("<image> What?", tokenizer=tok, num_images=2, prompt_format="v7")
    # training rows: the count must equal the images, a row without `image` counting 0
    row = [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "No"}]
    assert tokenize_conversation(row, tok, num_images=2, prompt_format="v7").num_images == 2
    with pytest.raises(ConversationError, match="2 <image> tag"):
        tokenize_conversation(row, tok, prompt_format="v7")


def test_prompt_format_comes_from_the_config_and_old_configs_load_unchanged():
    old = {"rwkv": {"n_embd": 64, "n_layer": 2, "vocab_size": 65536},
           "vision": {"kind": "tiny", "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32,
                                                "num_layers": 1, "num_heads": 2}}}
    config = VisualRWKVConfig.from_dict(dict(old))
    assert (config.prompt_format, config.max_images, config.text_only_layout) == ("v6", 1, "image-slot")
    v7 = VisualRWKVConfig.from_dict({**old, "prompt_format": "v7"})
    assert (v7.prompt_format, v7.max_images, v7.text_only_layout) == ("v7", None, "plain")
    assert VisualRWKVConfig.from_dict(v7.to_dict()) == v7
    assert VisualRWKVConfig.from_dict({**old, "prompt_format": "v7", "max_images": 3}).max_images == 3
    with pytest.raises(ValueError, match="v6 prompt format takes one image"):
        VisualRWKVConfig.from_dict({**old, "max_images": 2})
    with pytest.raises(ValueError, match="prompt_format"):
        VisualRWKVConfig.from_dict({**old, "prompt_format": "v5"})
    from visualrwkv.vision.encoders import VisionConfig

    parts = {name: VisionConfig(name, hf_config={}) for name in ("dinov2", "siglip", "sam")}
    stack = VisualRWKVConfig(rwkv=config.rwkv, vision=VisionConfig("stack", **parts))
    assert (stack.prompt_format, stack.max_images) == ("v7", None)


def test_the_shipped_tiny_model_keeps_the_v6_format():
    from visualrwkv.engine.defaults import DEFAULT_MODEL_DIR

    saved = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    config = VisualRWKVConfig.from_dict(saved)
    assert (config.prompt_format, config.max_images, config.image_position) == ("v6", 1, "middle")
    assert config.image_every_turn  # trained so (docs/tiny-model.md)
    # a config written before these fields existed reads as v6 too
    older = {k: v for k, v in saved.items() if k not in ("prompt_format", "max_images", "text_only_layout",
                                                         "image_every_turn")}
    config = VisualRWKVConfig.from_dict(older)
    assert (config.prompt_format, config.max_images, config.image_every_turn) == ("v6", 1, False)


# ---- the model and the engine ---------------------------------------------------------------------------------


def test_the_answer_depends_on_image_order(tiny_v7_vlm, pictures):
    model = tiny_v7_vlm
    a, b = (Image.open(p).convert("RGB") for p in pictures[:2])
    ids = model.prompt_ids("What is in the images?", 2)
    ab, _ = model.prefill(ids, [a, b])
    ba, _ = model.prefill(ids, [b, a])
    again, _ = model.prefill(ids, [a, b])
    assert torch.equal(ab, again)
    assert (ab - ba).abs().max() > 1e-3
    # the Python API gives what the engine gives
    assert model.chat([pictures[0], pictures[1]], "What is in the images?", max_new_tokens=12) == \
        alone(model, "What is in the images?", pictures[:2])


def test_two_image_requests_batched_equal_each_alone(tiny_v7_vlm, pictures):
    cases = [("Which is brighter?", pictures[:2]), ("Which is brighter?", pictures[1::-1]),
             ("Describe them.", pictures[1:4]), ("What color?", pictures[2:3]), ("Say hi.", [])]
    expected = [alone(tiny_v7_vlm, q, paths) for q, paths in cases]
    with Engine(tiny_v7_vlm, cache_bytes=0) as engine:
        handles = [engine.ask(q, inputs(paths), params=GREEDY) for q, paths in cases]
        got = [h.result().text for h in handles]
        assert engine.stats().peak_batch_size >= 2
    assert got == expected


def test_chunked_prefill_hands_each_chunk_its_own_images(tiny_v7_vlm, pictures):
    """Chunks of one image's width: each image is prefilled in its own chunk, from the state before it."""
    question, paths = "Describe them.", pictures[:3]
    n = tiny_v7_vlm.vit.num_tokens
    with Engine(tiny_v7_vlm, cache_bytes=0, prefill_chunk=n + 1) as engine:
        prompt = engine.build_prompt(question, inputs(paths))
        from visualrwkv.engine.prefill import plan_chunks

        spans = plan_chunks(prompt.ids, 0, prompt.checkpoints, n, n + 1)
        assert sum(prompt.ids[a:b].count(-200) == 1 for a, b in spans) == 3  # one image per chunk
        assert engine.generate(prompt, GREEDY).text == alone(tiny_v7_vlm, question, paths)


def test_prompt_tokens_count_every_image(tiny_v7_vlm, pictures):
    with Engine(tiny_v7_vlm) as engine:
        one = engine.build_prompt("Q?", inputs(pictures[:1]))
        three = engine.build_prompt("Q?", inputs(pictures[:3]))
        n = tiny_v7_vlm.vit.num_tokens
        # each extra image: its vectors plus the "\n" line break of its tag line
        assert engine.count_prompt_tokens(three) - engine.count_prompt_tokens(one) == 2 * (n + 1)
        assert engine.generate(three, GREEDY).prompt_tokens == engine.count_prompt_tokens(three)


def test_the_cache_never_confuses_requests_that_share_an_image(tiny_v7_vlm, pictures):
    a, b, c = pictures[:3]
    question = "What is in the images?"
    with Engine(tiny_v7_vlm) as engine:
        first = engine.ask(question, inputs([a, b]), params=GREEDY).result()
        shared = engine.ask(question, inputs([a, c]), params=GREEDY).result()
        swapped = engine.ask(question, inputs([b, a]), params=GREEDY).result()
        single = engine.ask(question, inputs([a]), params=GREEDY).result()
        repeat = engine.ask(question, inputs([a, b]), params=GREEDY).result()
    assert first.cached_tokens == shared.cached_tokens == swapped.cached_tokens == single.cached_tokens == 0
    assert repeat.cached_tokens > 0 and repeat.text == first.text
    assert shared.text == alone(tiny_v7_vlm, question, [a, c])
    assert swapped.text == alone(tiny_v7_vlm, question, [b, a])
    assert single.text == alone(tiny_v7_vlm, question, [a])
    # the keys: every image, in order, length-delimited; one image keys as it always did
    x, y = b"image-x", b"image-y"
    assert make_key([x], [1], "m") == make_key(x, [1], "m")
    assert make_key([], [1], "m") == make_key(None, [1], "m")
    keys = {make_key(v, [1], "m") for v in ([x, y], [y, x], [x], [y], [x + y], [x, x], None)}
    assert len(keys) == 7


def test_a_follow_up_about_several_images_resumes_the_answer_state(tiny_v7_vlm, pictures):
    with Engine(tiny_v7_vlm) as engine:
        question = "What is in the images?"
        answer = engine.ask(question, inputs(pictures[:2]), params=GREEDY).result().text
        assert answer  # an empty answer cannot be part of a history
        follow = engine.ask("And then?", inputs(pictures[:2]), [(question, answer)], GREEDY).result()
    assert follow.cached_tokens > 0
    assert follow.text == alone(tiny_v7_vlm, "And then?", pictures[:2], [(question, answer)])


# ---- a v6 model takes one image ------------------------------------------------------------------------------


def test_a_v6_model_refuses_two_images_in_the_api(tiny_vlm, pictures):
    with pytest.raises(ValueError, match="^this model takes one image per conversation, got 2$"):
        tiny_vlm.chat(pictures[:2], "What?")
    with Engine(tiny_vlm) as engine:
        with pytest.raises(ValueError, match="takes one image per conversation, got 2"):
            engine.ask("What?", inputs(pictures[:2]))
        assert engine.ask("What?", inputs(pictures[:1]), params=GREEDY).result().finish_reason in ("stop", "length")


def test_a_v6_model_refuses_two_images_on_the_command_line(tiny_vlm_dir, pictures, capsys):
    code = main(["ask", "--model", str(tiny_vlm_dir), "--image", str(pictures[0]), "--image", str(pictures[1]),
                 *GREEDY_FLAGS, "What?"])
    err = capsys.readouterr().err
    assert code == 1
    assert "this model takes one image per conversation, got 2" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---- ask and chat --------------------------------------------------------------------------------------------


def test_ask_with_several_images_equals_the_engine(tiny_v7_vlm, tiny_v7_vlm_dir, pictures, capsys):
    flags = [x for p in pictures[:3] for x in ("--image", str(p))]
    assert main(["ask", "--model", str(tiny_v7_vlm_dir), *flags, *GREEDY_FLAGS, "What is in the images?"]) == 0
    assert capsys.readouterr().out == alone(tiny_v7_vlm, "What is in the images?", pictures[:3]) + "\n"


def test_chat_image_command_adds_an_image_and_alone_clears_them(tiny_v7_vlm, tiny_v7_vlm_dir, pictures):
    a, b = pictures[:2]
    script = "\n".join(["What is it?", f"/image {b}", "What is it?", "/image", "Say hi.", "/quit"]) + "\n"
    done = subprocess.run([sys.executable, "-m", "visualrwkv.cli", "chat", "--model", str(tiny_v7_vlm_dir),
                           "--image", str(a), *GREEDY_FLAGS], input=script, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{alone(tiny_v7_vlm, 'What is it?', [a])}\n[new conversation about {a}, {b}]\n"
                           f"{alone(tiny_v7_vlm, 'What is it?', [a, b])}\n[new conversation about no image]\n"
                           f"{alone(tiny_v7_vlm, 'Say hi.', [])}\n")


def test_chat_with_two_images_on_a_v6_model_is_one_line(tiny_vlm_dir, pictures):
    done = subprocess.run([sys.executable, "-m", "visualrwkv.cli", "chat", "--model", str(tiny_vlm_dir),
                           "--image", str(pictures[0]), "--image", str(pictures[1])], input="hi\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "this model takes one image per conversation, got 2" in done.stderr
    assert "Traceback" not in done.stderr


# ---- data, training, evaluation ----------------------------------------------------------------------------


def _rows(root):
    for k, color in enumerate(COLORS[:3]):
        (root / f"i{k}.png").write_bytes(png(color, (32, 32)))
    rows = [{"id": "two", "image": ["i0.png", "i1.png"],
             "conversations": [{"from": "human", "value": "Compare <image> and <image>."},
                               {"from": "gpt", "value": "Red, then green."}]},
            {"id": "one", "image": "i2.png",
             "conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Blue"}]},
            {"id": "text", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi"}]}]
    path = root / "data.json"
    path.write_text(json.dumps(rows))
    return path


def test_data_rows_with_image_lists_in_the_v7_format(tmp_path):
    from visualrwkv.data.llava import DataError, LlavaDataset
    from visualrwkv.prompts import default_tokenizer

    tok = default_tokenizer()
    data = LlavaDataset(_rows(tmp_path), prompt_format="v7", image_position="middle")
    item = data[0]
    assert len(item["images"]) == 2 and item["images"][0].getpixel((0, 0)) == COLORS[0]
    expected = tok.encode("User: ") + [-200] + tok.encode("\n") + [-200] + tok.encode("\nCompare  and .\n\n")
    assert item["input_ids"].tolist()[:len(expected)] == expected
    # a v6 model takes one image per sample: the row is an error, or skipped and counted
    with pytest.raises(DataError, match="too_many_images: 2 images, but the model takes one image"):
        LlavaDataset(_rows(tmp_path), max_images=1)
    with pytest.warns(UserWarning, match="too_many_images=1"):
        kept = LlavaDataset(_rows(tmp_path), max_images=1, skip_bad_rows=True)
    assert [r.sample_id for r in kept.records] == ["one", "text"]


def test_one_training_step_with_the_v7_stage1_preset(tmp_path):
    from safetensors.torch import load_file

    from visualrwkv.model import VisualRWKV
    from visualrwkv.train.config import resolve
    from visualrwkv.train.trainer import Trainer

    model = {"rwkv": {"n_embd": 64, "n_layer": 2, "vocab_size": 65536, "version": 7},
             "vision": {"kind": "tiny", "tiny": {"image_size": 32, "patch_size": 8, "hidden_size": 32,
                                                  "num_layers": 1, "num_heads": 2}},
             "scanning": "unidirection"}
    from visualrwkv.testing import random_rwkv7_state_dict

    # stage 1 starts from a trained LM (a new RWKV-7's zero-initialised outputs would pass no gradient)
    torch.save(random_rwkv7_state_dict(64, 2, vocab_size=65536), tmp_path / "lm.pth")
    (cfg,) = resolve("v7_stage1", {"data": str(_rows(tmp_path)), "model": json.dumps(model), "max_steps": "1",
                                   "init_lm": str(tmp_path / "lm.pth"),
                                   "micro_batch_size": "3", "grad_accum": "1", "ctx_len": "256",
                                   "progress": "false", "out_dir": str(tmp_path / "run")})
    assert (cfg.prompt_format, cfg.projector, cfg.trainable) == ("v7", "mlp", ["proj.*"])
    trainer = Trainer(cfg)
    assert trainer.dataset.prompt_format == "v7" and len(trainer.dataset) == 3
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final = trainer.train()
    trained = VisualRWKV.from_pretrained(final)
    assert (trained.config.prompt_format, trained.config.projector, trained.max_images) == ("v7", "mlp", None)
    after = load_file(str(final / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("proj.") for k in changed)  # stage 1: the LM stays frozen


def test_eval_on_a_multi_image_fixture(tiny_v7_vlm_dir, tiny_vlm_dir, tmp_path, capsys):
    from visualrwkv.eval.benchmarks import build_fixture, read_items

    data = tmp_path / "gqa2"
    build_fixture("gqa", data, n=3, images=2)
    items = read_items("gqa", data)
    assert all(isinstance(i.image, tuple) and len(i.image) == 2 for i in items)
    assert items[0].text.startswith("<image>\n<image>\n")
    assert main(["eval", "--task", "gqa", "--data", str(data), "--out", str(tmp_path / "out"), "--model",
                 str(tiny_v7_vlm_dir), "--max-new-tokens", "8"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results[0]["n_missing"] == 0 and results[0]["n_items"] == 3
    # the oracle answers score 100 on it; a one-image model says it takes one image
    from visualrwkv.eval.benchmarks import score_predictions

    assert score_predictions("gqa", data, data / "oracle_predictions.jsonl").score == 100.0
    capsys.readouterr()
    assert main(["eval", "--task", "gqa", "--data", str(data), "--out", str(tmp_path / "out6"), "--model",
                 str(tiny_vlm_dir), "--max-new-tokens", "8"]) == 1
    assert "takes one image per conversation, got 2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="gqa"):
        build_fixture("pope", tmp_path / "pope2", n=2, images=2)


def test_web_ui_takes_more_images_for_a_model_that_takes_several(tiny_v7_vlm, tiny_vlm, pictures):
    pytest.importorskip("gradio", reason="the web UI needs gradio")
    from visualrwkv.serve.webui import build_demo

    def parts(model):
        engine = Engine(model, cache_bytes=0)
        demo = build_demo(engine, SamplingParams(max_tokens=12))
        more = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "more_images"]
        respond = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "respond")
        return engine, more[0], respond

    engine, more, respond = parts(tiny_vlm)
    engine.close()
    assert more.visible is False  # a v6 model takes one image: no second upload box
    engine, more, respond = parts(tiny_v7_vlm)
    with engine:
        assert more.visible is True
        a, b = pictures[:2]
        *_, (messages, state, _) = respond("What is it?", str(a), [str(b)], {"image": (), "pairs": []}, [],
                                           0, 0.85, 0, 0, 0, 12, -1)
    assert messages[-1]["content"] == alone(tiny_v7_vlm, "What is it?", [a, b])
    assert state["image"] == (str(a), str(b)) and state["pairs"] == [("What is it?", messages[-1]["content"])]
