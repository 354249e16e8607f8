"""The batching engine: cached == uncached, batched == alone, joining mid-stream == alone, streaming,
stop conditions, cancellation, shutdown and input validation; plus `load_model`."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
import torch
from PIL import Image

from visualrwkv.engine import defaults
from visualrwkv.engine.engine import Engine, EngineClosedError, ImageInput, build_chat_prompt
from visualrwkv.engine.sampling import SamplingParams
from visualrwkv.engine.stream import truncate_at_stop

GREEDY = dict(temperature=0.0, presence_penalty=0.0, frequency_penalty=0.0)
QUESTIONS = ["What color is it?", "Describe the image.", "How many shapes?", "Is there a circle?",
             "What is on the left?", "hello"]


def png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def red():
    return ImageInput.from_bytes(png((200, 30, 30)))


@pytest.fixture
def engine(tiny_vlm):
    with Engine(tiny_vlm) as e:
        yield e


def alone(model, prompt, params) -> tuple[str, list[int]]:
    """The request on an engine of its own with no cache: the reference answer."""
    with Engine(model, cache_bytes=0) as e:
        r = e.generate(prompt, params)
    return r.text, r.token_ids


def test_greedy_answer_matches_the_model_reference(tiny_vlm, engine, red):
    prompt = engine.build_prompt("What color is it?", red)
    r = engine.generate(prompt, SamplingParams(max_tokens=16, **GREEDY))
    expected = tiny_vlm.generate_greedy(prompt.ids, [red.image], max_new_tokens=16)
    assert r.token_ids == expected
    assert r.text == truncate_at_stop(tiny_vlm.tokenizer.decode(expected), ["\n\n"]).strip()
    assert r.prompt_tokens == len(prompt.ids) - 1 + tiny_vlm.vit.num_tokens
    assert r.completion_tokens == len(expected) + (r.finish_reason == "stop")


def test_cached_answer_equals_uncached(tiny_vlm, engine, red):
    prompt = engine.build_prompt("Describe the image.", red)
    params = SamplingParams(max_tokens=16, **GREEDY)
    first, second = engine.generate(prompt, params), engine.generate(prompt, params)
    assert first.cached_tokens == 0 and second.cached_tokens == second.prompt_tokens
    assert (first.text, first.token_ids) == (second.text, second.token_ids) == alone(tiny_vlm, prompt, params)
    # a seeded sample from the cached state equals the uncached one too
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    from_cache = engine.generate(prompt, seeded)
    assert from_cache.cached_tokens == from_cache.prompt_tokens
    assert from_cache.token_ids == alone(tiny_vlm, prompt, seeded)[1]
    # ... and it is a sample, not the greedy answer again: the comparison above could not pass by accident
    assert from_cache.token_ids != first.token_ids
    stats = engine.stats().cache
    assert stats.hits >= 2 and stats.bytes <= stats.max_bytes


def test_follow_up_turn_resumes_after_the_previous_answer(tiny_vlm, engine):
    params = SamplingParams(max_tokens=16, **GREEDY)
    image = ImageInput.from_bytes(png((10, 200, 30)))
    q1 = "What color is it?"  # its greedy answer ends with "\n\n" and re-tokenizes to the same ids
    r1 = engine.generate(engine.build_prompt(q1, image), params)
    assert r1.finish_reason == "stop" and r1.text
    follow_up = engine.build_prompt("And then?", image, history=[(q1, r1.text)])
    r2 = engine.generate(follow_up, params)
    first_turn = engine.count_prompt_tokens(engine.build_prompt(q1, image))
    # resumed from the state after the answer: the first turn and every answer token were cached
    assert r2.cached_tokens == first_turn + len(r1.token_ids)
    assert (r2.text, r2.token_ids) == alone(tiny_vlm, follow_up, params)
    # a history the engine did not generate falls back to the first turn's cached state
    edited = engine.build_prompt("And then?", image, history=[(q1, "something else")])
    r3 = engine.generate(edited, params)
    assert r3.cached_tokens == first_turn
    assert (r3.text, r3.token_ids) == alone(tiny_vlm, edited, params)


@pytest.mark.parametrize("sampling", [GREEDY, dict(temperature=1.0, top_p=0.9)], ids=["greedy", "seeded"])
def test_batched_answers_equal_each_request_alone(tiny_vlm, red, sampling):
    green = ImageInput.from_bytes(png((10, 200, 30)))
    prompts = [build_chat_prompt(q, (), img, tokenizer=tiny_vlm.tokenizer)
               for q in QUESTIONS[:4] for img in (red, green)]
    params = [SamplingParams(max_tokens=12, seed=100 + i, **sampling) for i in range(len(prompts))]
    with Engine(tiny_vlm, max_batch_size=8) as e:
        handles = [e.submit(p, s) for p, s in zip(prompts, params)]
        together = [(h.result().text, h.result().token_ids) for h in handles]
        assert e.stats().peak_batch_size > 1
    assert together == [alone(tiny_vlm, p, s) for p, s in zip(prompts, params)]


def test_request_joining_mid_stream_gets_the_same_answer(tiny_vlm, red):
    long = SamplingParams(max_tokens=24, stop=[], stop_token_ids=[], **GREEDY)
    short = SamplingParams(max_tokens=10, seed=3)
    first_prompt = build_chat_prompt("Describe the image.", (), red, tokenizer=tiny_vlm.tokenizer)
    second_prompt = build_chat_prompt("What is on the left?", (), red, tokenizer=tiny_vlm.tokenizer)
    with Engine(tiny_vlm) as e:
        first = e.submit(first_prompt, long)
        stream = iter(first)
        head = [next(stream) for _ in range(3)]
        assert not first.done
        second = e.submit(second_prompt, short)
        rest = list(stream)
        assert "".join(head + rest) == first.result().text
        assert e.stats().peak_batch_size == 2
        assert first.result().finish_reason == "length" and first.result().completion_tokens == 24
    assert (first.result().text, first.result().token_ids) == alone(tiny_vlm, first_prompt, long)
    assert (second.result().text, second.result().token_ids) == alone(tiny_vlm, second_prompt, short)


def test_async_stream_deltas_add_up_to_the_result(engine, red):
    handle = engine.ask("How many shapes?", red, params=SamplingParams(max_tokens=20, seed=1))

    async def collect():
        return [d async for d in handle]

    deltas = asyncio.run(collect())
    assert "".join(deltas) == handle.result().text
    assert all(deltas)


def test_stop_strings_token_ids_and_max_tokens(engine, red):
    base = dict(max_tokens=16, **GREEDY)
    prompt = engine.build_prompt("What color is it?", red)
    free = engine.generate(prompt, SamplingParams(**base, stop=[], stop_token_ids=[]))
    assert free.finish_reason == "length" and free.completion_tokens == 16
    cut_at = free.text[3:6]
    cut = engine.generate(prompt, SamplingParams(**base, stop=[cut_at], stop_token_ids=[]))
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.index(cut_at)].strip()
    first_token = free.token_ids[0]
    by_id = engine.generate(prompt, SamplingParams(**base, stop_token_ids=[first_token]))
    assert (by_id.finish_reason, by_id.token_ids, by_id.text, by_id.completion_tokens) == ("stop", [], "", 1)
    one = engine.generate(prompt, SamplingParams(**{**base, "max_tokens": 1}, stop_token_ids=[]))
    assert one.finish_reason == "length" and one.token_ids == free.token_ids[:1]


def test_cancel_and_text_only_requests(engine):
    handle = engine.ask("Tell me a story.", params=SamplingParams(max_tokens=500, stop=[], stop_token_ids=[]))
    next(iter(handle))
    handle.cancel()
    result = handle.result(timeout=30)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 500


def test_submissions_from_many_threads(tiny_vlm, red):
    params = SamplingParams(max_tokens=8, **GREEDY)
    results = {}
    with Engine(tiny_vlm, max_batch_size=4) as e:
        def worker(i):
            results[i] = e.ask(QUESTIONS[i % len(QUESTIONS)], red, params=params).result().text
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert e.stats().peak_batch_size <= 4
    for i in range(12):
        assert results[i] == results[i % len(QUESTIONS)]


def test_shutdown(tiny_vlm, red):
    e = Engine(tiny_vlm)
    running = e.ask("Tell me a story.", red, params=SamplingParams(max_tokens=10_000, stop=[], stop_token_ids=[]))
    next(iter(running))
    e.close(drain=False)
    with pytest.raises(EngineClosedError):
        running.result(timeout=30)
    with pytest.raises(EngineClosedError, match="shutting down"):
        e.ask("hi")
    # draining finishes what was submitted
    e = Engine(tiny_vlm)
    handle = e.ask("hi", params=SamplingParams(max_tokens=5, stop_token_ids=[]))
    e.close(drain=True)
    assert handle.result(timeout=0).completion_tokens == 5


def test_input_validation(tiny_vlm, red):
    e = Engine(tiny_vlm, max_prompt_tokens=30, max_new_tokens=50)
    try:
        with pytest.raises(ValueError, match="above the limit of 30"):
            e.ask("a long question " * 10, red)
        with pytest.raises(ValueError, match="max_tokens 51 is above the limit of 50"):
            e.ask("hi", params=SamplingParams(max_tokens=51))
        with pytest.raises(ValueError, match="image"):
            e.build_prompt("look: <image>")
        with pytest.raises(ValueError, match="history item 0"):
            e.build_prompt("next", red, history=[("q", "   ")])
        with pytest.raises(TypeError, match="ChatPrompt"):
            e.submit([1, 2, 3])
        with pytest.raises(ValueError, match="cannot identify image"):
            ImageInput.from_bytes(b"not an image")
        with pytest.raises(ValueError, match="max_pixels"):
            ImageInput.from_bytes(png(size=(300, 300)), max_pixels=100 * 100)
    finally:
        e.close()
    with pytest.raises(ValueError, match="max_batch_size"):
        Engine(tiny_vlm, max_batch_size=0)


def test_load_model(tiny_vlm, tiny_vlm_dir, tmp_path, monkeypatch):
    loaded = defaults.load_model(str(tiny_vlm_dir))
    assert torch.equal(loaded.rwkv.head.weight, tiny_vlm.rwkv.head.weight)
    monkeypatch.setattr(defaults, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="visualrwkv train --config tiny"):
        defaults.load_model(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        defaults.load_model(tmp_path / "nope")
