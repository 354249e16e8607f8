"""Requests do not hold each other up or break each other: chunked prefill bounds the work a huge
prompt puts before everyone else's next token; tiny temperatures sample greedily."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visualrwkv.constants import IMAGE_TOKEN_INDEX
from visualrwkv.engine.engine import Engine, plan_chunks
from visualrwkv.engine.sampling import GREEDY_BELOW, Sampler, SamplingParams

GREEDY = dict(temperature=0, presence_penalty=0, frequency_penalty=0)


def long_history(turns: int) -> list[tuple[str, str]]:
    return [(f"What is shape number {i} in the picture?", f"It is a red circle beside a blue square {i}.")
            for i in range(turns)]


def test_a_short_request_beside_a_huge_one_waits_for_a_bounded_amount_of_prefill(tiny_vlm, monkeypatch):
    """Counted in prompt positions run, not seconds: the short request finishes after at most a few
    chunks of the huge prompt (without chunking: after all ~8000 of its positions)."""
    chunk = 128
    engine = Engine(tiny_vlm, prefill_chunk=chunk, cache_bytes=0)
    huge = engine.build_prompt("And now?", None, long_history(300))
    short = engine.build_prompt("Hello?")
    huge_positions = engine.count_prompt_tokens(huge)
    assert huge_positions > 7000

    log = []  # (positions run, whether the short request was done), in the engine thread's order
    handles = {}
    prefill = tiny_vlm.prefill

    def recording_prefill(ids, images=(), state=None, **kw):
        log.append((len(ids) - ids.count(IMAGE_TOKEN_INDEX), "short" in handles and handles["short"].done))
        return prefill(ids, images, state, **kw)

    monkeypatch.setattr(tiny_vlm, "prefill", recording_prefill)
    with engine:
        handles["huge"] = engine.submit(huge, SamplingParams(max_tokens=4, **GREEDY))
        handles["short"] = engine.submit(short, SamplingParams(max_tokens=4, stop=["never"], **GREEDY))
        assert handles["short"].result(timeout=120).completion_tokens == 4
        handles["huge"].result(timeout=120)
    before_short_done = sum(n for n, short_done in log if not short_done)
    # the log counts ids; both prompts are text-only, and their text-only slots are positions too
    slots = 2 * tiny_vlm.text_only_positions
    assert sum(n for n, _ in log) + slots == huge_positions + engine.count_prompt_tokens(short)
    # the short prompt itself, then at most one chunk per step for its prefill and 4 decode steps
    assert before_short_done <= engine.count_prompt_tokens(short) + 8 * chunk, before_short_done
    assert max(n for n, _ in log) <= chunk


def test_chunked_prefill_gives_the_state_of_the_whole_prompt(tiny_vlm):
    from test_serve import png_bytes

    from visualrwkv.engine.engine import ImageInput

    image = ImageInput.from_bytes(png_bytes())
    prompt = Engine(tiny_vlm).build_prompt("What is it?", image, long_history(2))
    whole_logits, whole = tiny_vlm.prefill(prompt.ids, [image.image])
    spans = plan_chunks(prompt.ids, 0, prompt.checkpoints, tiny_vlm.vit.num_tokens, 9)
    assert len(spans) > 5
    state = None
    for a, b in spans:
        segment = prompt.ids[a:b]
        # the text before the image is part of an image prompt: no text-only slot before it
        logits, state = tiny_vlm.prefill(segment, [image.image] if IMAGE_TOKEN_INDEX in segment else [], state,
                                         continuation=True)
    torch.testing.assert_close(logits, whole_logits, atol=1e-4, rtol=1e-4)
    for name in ("att_shift", "wkv", "ffn_shift"):
        torch.testing.assert_close(getattr(state, name), getattr(whole, name), atol=1e-4, rtol=1e-4)
    # the engine runs those chunks and answers as the model's own greedy decoding does
    with Engine(tiny_vlm, prefill_chunk=9, cache_bytes=0) as engine:
        tokens = engine.submit(prompt, SamplingParams(max_tokens=8, stop=["never"], **GREEDY)).result().token_ids
    assert tokens == tiny_vlm.generate_greedy(prompt.ids, [image.image], 8)[:len(tokens)]


IMAGE = IMAGE_TOKEN_INDEX


@pytest.mark.parametrize("ids, checkpoints, limit, expected", [
    (list(range(1, 11)), [10], 4, [(0, 4), (4, 8), (8, 10)]),  # cut wherever the limit falls
    (list(range(1, 11)), [3, 6, 10], 5, [(0, 3), (3, 6), (6, 10)]),  # at the furthest checkpoint within reach
    (list(range(1, 11)), [2, 3, 10], 5, [(0, 3), (3, 8), (8, 10)]),
    ([1, 2, IMAGE, 3, 4], [3, 5], 100, [(0, 3), (3, 5)]),  # right after the image: its state serves any question
    ([1, 2, IMAGE, 3, 4], [5], 6, [(0, 2), (2, 3), (3, 5)]),  # the image (16 positions) is never cut
    ([IMAGE, 1, 2, 3], [1, 4], 20, [(0, 1), (1, 4)]),
])
def test_plan_chunks(ids, checkpoints, limit, expected):
    assert plan_chunks(ids, 0, checkpoints, 16, limit) == expected


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([1, 2, 3, IMAGE]), min_size=1, max_size=60), st.integers(1, 20),
       st.integers(0, 59), st.sets(st.integers(1, 60)))
def test_chunks_cover_the_prompt_within_the_limit(ids, limit, start, checkpoints):
    start = min(start, len(ids) - 1)
    spans = plan_chunks(ids, start, sorted(checkpoints), 5, limit)
    assert spans[0][0] == start and spans[-1][1] == len(ids)
    assert all(a < b for a, b in spans) and all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))
    for a, b in spans:
        width = sum(5 if t == IMAGE else 1 for t in ids[a:b])
        assert width <= max(limit, 5 + limit - 1) and (width <= limit or IMAGE in ids[a:b])


@pytest.mark.parametrize("temperature", [1e-50, 5e-324, GREEDY_BELOW / 2, 0.0])
def test_tiny_temperatures_are_greedy(temperature):
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(lambda t: b"x")
    rows = [sampler.new_row(SamplingParams(temperature=temperature, presence_penalty=0, frequency_penalty=0))
            for _ in range(3)]
    assert sampler.sample(logits, rows) == logits.argmax(dim=-1).tolist()


def test_a_row_with_no_finite_weight_raises_before_any_draw():
    sampler = Sampler(lambda t: b"x")
    rows = [sampler.new_row(SamplingParams(seed=1)), sampler.new_row(SamplingParams(seed=2))]
    states = [row.generator.get_state() for row in rows]
    logits = torch.zeros(2, 10)
    logits[1, 3] = float("inf")  # softmax gives NaN
    with pytest.raises(ValueError, match="row 1: no next token has a finite positive weight"):
        sampler.sample(logits, rows)
    assert all(torch.equal(row.generator.get_state(), s) for row, s in zip(rows, states))
    assert all(not row.occurrence for row in rows)
